"""What a caller asks to save."""

from typing import Optional

import torch

from mmlib.schema.environment import Environment
from mmlib.schema.restorable_object import StateDictRestorableObjectWrapper


def unwrap_compiled(model: torch.nn.Module) -> torch.nn.Module:
    """The module a `torch.compile` wrapper runs (compiling is not needed to save or rebuild it)."""
    original = getattr(model, "_orig_mod", None)
    return original if isinstance(original, torch.nn.Module) else model


class ModelSaveInfo:
    """A model to save, its base model id (or None), the environment, and optionally how to build it.

    `model_code` is the .py file defining the class; `model_import` (`package.module:ClassOrFactory`)
    names it in an installed package instead; `init_args` are the JSON constructor arguments. A
    `torch.compile` wrapper is unwrapped: the module it runs is what is saved.
    """

    def __init__(self, model: Optional[torch.nn.Module], base_model: Optional[str],
                 environment: Optional[Environment], model_code: Optional[str] = None, *,
                 init_args: Optional[dict] = None, model_import: Optional[str] = None):
        self.model = model
        self.base_model = base_model
        self.environment = environment
        self.model_code = model_code
        self.init_args = init_args
        self.model_import = model_import

    @property
    def model(self) -> Optional[torch.nn.Module]:
        return self._model

    @model.setter
    def model(self, model: Optional[torch.nn.Module]) -> None:
        self._model = unwrap_compiled(model) if isinstance(model, torch.nn.Module) else model

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(model={type(self.model).__name__}, base_model={self.base_model!r}, "
                f"model_code={self.model_code!r})")


class TrainSaveInfo:
    """How the next version is trained from its base: the train service wrapper and the kwargs of `train`."""

    def __init__(self, train_service_wrapper: StateDictRestorableObjectWrapper, train_kwargs: Optional[dict]):
        self.train_service_wrapper = train_service_wrapper
        self.train_kwargs = train_kwargs

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(train_service_wrapper={type(self.train_service_wrapper).__name__}, "
                f"train_kwargs={self.train_kwargs!r})")


class ProvModelSaveInfo(ModelSaveInfo):
    """A ModelSaveInfo plus provenance: the raw data path and how the model is trained from its base."""

    def __init__(self, model: Optional[torch.nn.Module], base_model: Optional[str],
                 environment: Optional[Environment], model_code: Optional[str] = None,
                 raw_dataset: Optional[str] = None, train_info: Optional[TrainSaveInfo] = None, **model_options):
        super().__init__(model, base_model, environment, model_code, **model_options)
        self.raw_dataset = raw_dataset
        self.train_info = train_info

    def __repr__(self) -> str:
        return f"{super().__repr__()[:-1]}, raw_dataset={self.raw_dataset!r}, train_info={self.train_info!r})"
