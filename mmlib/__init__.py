"""mmlib: save and recover PyTorch models exactly (weights, code, environment, provenance).

The one-line API (`mmlib.save`, `mmlib.load`, ... from `mmlib.api`; `mmlib.Checkpointer` and `mmlib.resume` from
`mmlib.checkpoints`, `mmlib.diff` from `mmlib.model_diff`) is imported on first use, so that `import
mmlib` (and the `mmlib` command) stays quick.
"""

import importlib
from typing import Any

__version__ = "0.2.0"
_API = ("Version", "open_store", "save", "load", "get", "find", "set_alias", "set_tags", "set_metrics")
_CHECKPOINTS = ("Checkpointer", "Checkpoint", "Retention", "load_checkpoint", "resume", "prune")
_DIFF = ("diff", "ModelDiff", "TensorChange")
__all__ = ["__version__", *_API, *_CHECKPOINTS, *_DIFF]
_LAZY_MODULES = {"mmlib.api": _API, "mmlib.checkpoints": _CHECKPOINTS, "mmlib.model_diff": _DIFF}


def __getattr__(name: str) -> Any:
    """The one-line API's names, imported from `mmlib.api` (checkpoints from `mmlib.checkpoints`, diffs from
    `mmlib.model_diff`) when first asked for."""
    for module, names in _LAZY_MODULES.items():
        if name in names:
            return getattr(importlib.import_module(module), name)
    raise AttributeError(f"module 'mmlib' has no attribute {name!r}")
