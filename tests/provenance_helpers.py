"""Provenance test helpers: a tiny model, a train service whose training cannot be reproduced, and a train service
written like the original MMlib's (it restores its optimizer itself when training first needs it).

This file is stored as code by the tests and imported from the store at recovery, so it imports only
installed packages.
"""

import torch

from mmlib.demo.image_classification import (DATA, DATALOADER, OPTIMIZER, ImageClassificationTrainService,
                                             image_classification_train_wrapper)
from mmlib.deterministic import deterministic
from mmlib.persistence.base import DictPersistenceService, FilePersistenceService
from mmlib.schema.restorable_object import (RestorableObjectWrapper, StateDictRestorableObjectWrapper,
                                            StateFileRestorableObjectWrapper)
from mmlib.schema.save_info_builder import ModelSaveInfoBuilder
from mmlib.track_env import track_current_environment
from mmlib.util.init_from_file import create_object

TRAIN_KWARGS_2 = {"number_batches": 2}


def prov_save_info(model, base_model_id, raw_data, wrapper, train_kwargs=TRAIN_KWARGS_2):
    """The save info of a provenance version of `model` on `base_model_id`, trained on `raw_data` by `wrapper`."""
    return (ModelSaveInfoBuilder()
            .add_model_info(env=track_current_environment(), model=model, base_model_id=base_model_id)
            .add_prov_data(raw_data_path=raw_data, train_kwargs=train_kwargs, train_service_wrapper=wrapper)
            .build())


def save_trained_version(service, model, base_id, raw_data, wrapper, train_kwargs=TRAIN_KWARGS_2):
    """The paper's flow for one version: save its provenance, train the live model the same way, record the hash."""
    model_id = service.save_model(prov_save_info(model, base_id, raw_data, wrapper, train_kwargs))
    deterministic(wrapper.instance.train, [model], train_kwargs)
    service.add_weights_hash_info(model_id, model)
    return model_id


class TinyNet(torch.nn.Module):
    """A small CNN for 3-class 64x64 images (fast to train in tests)."""

    def __init__(self):
        super().__init__()
        self.features = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2), torch.nn.ReLU(),
                                            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
        self.classifier = torch.nn.Linear(8, 3)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(inputs))


class UnseededNoiseTrainService(ImageClassificationTrainService):
    """Trains like the example service, then adds noise from an unseeded generator (a non-deterministic step)."""

    def train(self, model: torch.nn.Module, number_batches=None) -> None:
        super().train(model, number_batches=number_batches)
        generator = torch.Generator()
        generator.seed()
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 1e-3)


class WideNet(TinyNet):
    """TinyNet with a wide hidden layer (about 100k parameters): its weights and momentum buffers dwarf the
    documents of a version, so what a version stores shows in its byte count."""

    def __init__(self):
        super().__init__()
        self.classifier = torch.nn.Sequential(torch.nn.Linear(8, 8192), torch.nn.ReLU(), torch.nn.Linear(8192, 3))


class LazyOptimizerTrainService(ImageClassificationTrainService):
    """The original MMlib's ImagenetTrainService: `train` restores the optimizer wrapper itself when it has no
    instance yet (`_get_optimizer`)."""

    def _optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        return self._get_optimizer(model.parameters())

    def _get_optimizer(self, parameters) -> torch.optim.Optimizer:
        optimizer_wrapper = self.state_objs[OPTIMIZER]
        if not optimizer_wrapper.instance:
            optimizer_wrapper.restore_instance({"params": parameters})
        return optimizer_wrapper.instance


class LazyOptimizerTrainWrapper(StateDictRestorableObjectWrapper):
    """The original MMlib's ImagenetTrainWrapper: loads each state object by its stored id with `Cls.load` (not
    `load_state_obj`), restores the data and loader, and leaves the optimizer to the train service."""

    def restore_instance(self, file_pers_service: FilePersistenceService,
                         dict_pers_service: DictPersistenceService, restore_root: str) -> None:
        state_objs = {}
        data = RestorableObjectWrapper.load(self.state_objs[DATA], file_pers_service, dict_pers_service,
                                            restore_root, True, True)
        data.restore_instance()
        state_objs[DATA] = data
        loader = RestorableObjectWrapper.load(self.state_objs[DATALOADER], file_pers_service, dict_pers_service,
                                              restore_root, True, True)
        loader.restore_instance({"dataset": data.instance})
        state_objs[DATALOADER] = loader
        state_objs[OPTIMIZER] = StateFileRestorableObjectWrapper.load(
            self.state_objs[OPTIMIZER], file_pers_service, dict_pers_service, restore_root, True, True)
        self.instance = create_object(code=self.code.path, class_name=self.class_name)
        self.instance.state_objs = state_objs


def lazy_optimizer_train_wrapper(model: torch.nn.Module, raw_data: str, **options) -> LazyOptimizerTrainWrapper:
    """A live LazyOptimizerTrainService for `model` on `raw_data` (the example service's objects), wrapped."""
    state_objs = image_classification_train_wrapper(model, raw_data, **options).instance.state_objs
    return LazyOptimizerTrainWrapper(instance=LazyOptimizerTrainService(state_objs))
