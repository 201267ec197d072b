"""What a caller asks to save."""

from typing import Optional

import torch

from mmlib.schema.environment import Environment


class ModelSaveInfo:
    """A model to save, its base model id (or None), the environment, and optionally its code file."""

    def __init__(self, model: torch.nn.Module, base_model: Optional[str], environment: Optional[Environment],
                 model_code: Optional[str] = None):
        self.model = model
        self.base_model = base_model
        self.environment = environment
        self.model_code = model_code

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(model={type(self.model).__name__}, base_model={self.base_model!r}, "
                f"model_code={self.model_code!r})")
