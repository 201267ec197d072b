"""Names for every torch dtype a state dict can hold, and the way back, without eval or arbitrary getattr."""

import re

import torch

from mmlib.errors import IntegrityError

_NAME = re.compile(r"[a-z][a-z0-9_]*")
DTYPES_BY_NAME = {name: value for name, value in vars(torch).items()
                  if isinstance(value, torch.dtype) and _NAME.fullmatch(name) and str(value) == f"torch.{name}"}


def dtype_name(dtype: torch.dtype) -> str:
    """`torch.complex64` -> `complex64`."""
    return str(dtype).removeprefix("torch.")


def dtype_from_name(name: str) -> torch.dtype:
    """The torch dtype called `name`; raises IntegrityError for anything else."""
    dtype = DTYPES_BY_NAME.get(name) if isinstance(name, str) else None
    if dtype is None:
        raise IntegrityError(f"{name!r} is not a torch dtype this torch knows; the stored metadata is damaged, or "
                             "it was written by a newer torch: run `mmlib verify`")
    return dtype
