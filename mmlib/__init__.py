"""mmlib: save and recover PyTorch models exactly (weights, code, environment, provenance).

The one-line API (`mmlib.save`, `mmlib.load`, ... from `mmlib.api`; `mmlib.Checkpointer` and `mmlib.resume` from
`mmlib.checkpoints`) is imported on first use, so that `import
mmlib` (and the `mmlib` command) stays quick.
"""

import importlib
from typing import Any

__version__ = "0.2.0"
_API = ("Version", "open_store", "save", "load", "get", "find", "set_alias", "set_tags", "set_metrics")
_CHECKPOINTS = ("Checkpointer", "Checkpoint", "Retention", "load_checkpoint", "resume", "prune")
__all__ = ["__version__", *_API, *_CHECKPOINTS]


def __getattr__(name: str) -> Any:
    """The one-line API's names, imported from `mmlib.api` (checkpoints from `mmlib.checkpoints`) when first asked
    for."""
    if name in _API:
        return getattr(importlib.import_module("mmlib.api"), name)
    if name in _CHECKPOINTS:
        return getattr(importlib.import_module("mmlib.checkpoints"), name)
    raise AttributeError(f"module 'mmlib' has no attribute {name!r}")
