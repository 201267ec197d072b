"""mmlib: save and recover PyTorch models exactly (weights, code, environment, provenance)."""

__version__ = "0.2.0"
