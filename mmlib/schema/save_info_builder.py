"""Builds `ModelSaveInfo` objects step by step, as in the original API."""

from typing import Optional

import torch

from mmlib.save_info import ModelSaveInfo
from mmlib.schema.environment import Environment
from mmlib.track_env import track_current_environment


class ModelSaveInfoBuilder:
    """Collects a model, its base, code and environment, then `build()`s the save info."""

    def __init__(self):
        self._model: Optional[torch.nn.Module] = None
        self._code: Optional[str] = None
        self._base_model_id: Optional[str] = None
        self._env: Optional[Environment] = None

    def add_model_info(self, env: Optional[Environment] = None, model: Optional[torch.nn.Module] = None,
                       code: Optional[str] = None, base_model_id: Optional[str] = None) -> "ModelSaveInfoBuilder":
        """Set the model, its code file, its base model id and the environment (default: the current one)."""
        self._env = env
        self._model = model
        self._code = code
        self._base_model_id = base_model_id
        return self

    def build(self) -> ModelSaveInfo:
        """The save info for `save_model`."""
        env = self._env if self._env is not None else track_current_environment()
        return ModelSaveInfo(self._model, self._base_model_id, env, self._code)
