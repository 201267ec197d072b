"""Builds `ModelSaveInfo` objects step by step, as in the original API."""

from typing import Optional

import torch

from mmlib.save_info import ModelSaveInfo, ProvModelSaveInfo, TrainSaveInfo
from mmlib.schema.environment import Environment
from mmlib.schema.restorable_object import StateDictRestorableObjectWrapper
from mmlib.track_env import track_current_environment


class ModelSaveInfoBuilder:
    """Collects a model, its base, code and environment, then `build()`s the save info."""

    def __init__(self):
        self._model: Optional[torch.nn.Module] = None
        self._code: Optional[str] = None
        self._base_model_id: Optional[str] = None
        self._env: Optional[Environment] = None
        self._raw_data_path: Optional[str] = None
        self._train_info: Optional[TrainSaveInfo] = None
        self._model_options: dict = {}

    def add_model_info(self, env: Optional[Environment] = None, model: Optional[torch.nn.Module] = None,
                       code: Optional[str] = None, base_model_id: Optional[str] = None, *,
                       init_args: Optional[dict] = None,
                       model_import: Optional[str] = None) -> "ModelSaveInfoBuilder":
        """Set the model, its code file, its base model id and the environment (default: the current one).

        For a class that needs constructor arguments pass them as JSON `init_args`; for a class (or factory)
        from an installed package pass `model_import='package.module:Name'` instead of copying its code.
        """
        self._env = env
        self._model = model
        self._code = code
        self._base_model_id = base_model_id
        self._model_options = {"init_args": init_args, "model_import": model_import}
        return self

    def add_prov_data(self, raw_data_path: str, train_kwargs: Optional[dict],
                      train_service_wrapper: StateDictRestorableObjectWrapper) -> "ModelSaveInfoBuilder":
        """Describe how the model is trained from its base: data directory, train kwargs, train service wrapper."""
        self._raw_data_path = raw_data_path
        self._train_info = TrainSaveInfo(train_service_wrapper, train_kwargs)
        return self

    def build(self) -> ModelSaveInfo:
        """The save info for `save_model` (a ProvModelSaveInfo once provenance data was added)."""
        env = self._env if self._env is not None else track_current_environment()
        if self._train_info is not None:
            return ProvModelSaveInfo(self._model, self._base_model_id, env, self._code, self._raw_data_path,
                                     self._train_info, **self._model_options)
        return ModelSaveInfo(self._model, self._base_model_id, env, self._code, **self._model_options)
