"""Make PyTorch runs repeatable: fixed seeds and deterministic kernels, so that training can be re-run bit-exactly."""

import logging
import os
import random
from typing import Any, Callable, Mapping, Optional, Sequence, TypeVar

import torch

logger = logging.getLogger(__name__)

T = TypeVar("T")

# cuBLAS is only deterministic with a fixed workspace configuration (see PyTorch's reproducibility notes).
_CUBLAS_WORKSPACE_CONFIG = ":4096:8"


def set_deterministic(seed: int = 0, *, warn_only: bool = False) -> None:
    """Seed python, numpy (if installed) and torch, and select deterministic kernels only.

    With ``warn_only=True`` an operation that has no deterministic implementation warns instead of raising.
    """
    if torch.cuda.is_available():
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", _CUBLAS_WORKSPACE_CONFIG)
    random.seed(seed)
    try:
        import numpy
    except ImportError:
        logger.debug("numpy is not installed; not seeding it")
    else:
        numpy.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=warn_only)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    # torch declares this flag as the descriptor behind it (ContextProp, cudnn's as bool); setting it takes a bool.
    torch.backends.mkldnn.deterministic = True  # type: ignore[assignment]
    logger.debug("deterministic mode set (seed=%s, warn_only=%s)", seed, warn_only)


def deterministic(func: Callable[..., T], f_args: Optional[Sequence[Any]] = None,
                  f_kwargs: Optional[Mapping[str, Any]] = None) -> T:
    """Call ``func(*f_args, **f_kwargs)`` after ``set_deterministic()`` and return its result."""
    set_deterministic()
    return func(*(f_args or ()), **(f_kwargs or {}))
