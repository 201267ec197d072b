"""Example provenance components: an image-classification train service and a small generated image dataset."""
