"""A small image-classification dataset generated from a seed: JPEGs in one folder per class, no downloads."""

import os

import numpy
from PIL import Image


def generate_image_dataset(root: str, num_classes: int = 3, images_per_class: int = 8, image_size: int = 64,
                           seed: int = 0) -> str:
    """Write `num_classes` x `images_per_class` RGB JPEGs under `root/class_<k>/`; the same seed gives the same
    files. Each class has its own colour and stripe pattern, plus noise. Returns `root`."""
    rng = numpy.random.default_rng(seed)
    rows = numpy.arange(image_size, dtype=numpy.float64).reshape(-1, 1, 1)
    for label in range(num_classes):
        class_dir = os.path.join(root, f"class_{label}")
        os.makedirs(class_dir, exist_ok=True)
        colour = rng.uniform(40, 215, size=3)
        stripes = 40 * numpy.sin(rows * (label + 1) * numpy.pi / image_size)
        for index in range(images_per_class):
            noise = rng.normal(0, 25, size=(image_size, image_size, 3))
            pixels = numpy.clip(colour + stripes + noise, 0, 255).astype(numpy.uint8)
            Image.fromarray(pixels, "RGB").save(os.path.join(class_dir, f"{index:04d}.jpg"), quality=90)
    return root
