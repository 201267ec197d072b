"""What `recover_model` returns."""

from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:  # for annotations only: importing mmlib.schema (as `mmlib ls` does) needs no torch
    import torch


class RestoredModelInfo:
    """A recovered model (and the id it was stored under)."""

    def __init__(self, model: Optional["torch.nn.Module"] = None, model_id: Optional[str] = None):
        self.model = model
        self.model_id = model_id

    def __repr__(self) -> str:
        return f"RestoredModelInfo(model={type(self.model).__name__}, model_id={self.model_id!r})"
