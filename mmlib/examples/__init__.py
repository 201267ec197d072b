"""Examples that ship with mmlib: the main example (`python -m mmlib.examples.baseline`: save, recover and check a
model on the embedded store) and provenance components (an image-classification train service and a small
generated image dataset)."""
