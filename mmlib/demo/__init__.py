"""Demonstrations that ship with mmlib (library code; the scripts in the repository's `examples/` run them).

- `baseline`: the main demo, `python -m mmlib.demo.baseline`: save, recover and check a model on the embedded
  store.
- `image_classification`, `image_data`: what the provenance demo trains with, an image-classification train
  service and a small generated image dataset. They need Pillow, the `examples` extra; nothing else in mmlib
  imports them.
"""
