"""An example train service for image classification, stored and restored by the provenance approach.

Components: `ImageFolderDataset` (JPEGs in one folder per class, read with pillow), a torch `DataLoader`
(restored by its import command), `SGDOptimizer` (an SGD whose state is stored as a file) and
`ImageClassificationTrainService.train(model, number_batches=...)`. `ImageClassificationTrainWrapper`
rebuilds all of them from the store; `image_classification_train_wrapper` builds them for a live model.
This file is stored with every provenance version and imported from the store at recovery, so it imports
only installed packages.
"""

import itertools
import logging
import os
from typing import Optional

import numpy
import torch
from PIL import Image
from torch.utils.data import DataLoader

from mmlib.constants import CURRENT_DATA_ROOT
from mmlib.persistence.base import DictPersistenceService, FilePersistenceService
from mmlib.schema.restorable_object import (RestorableObjectWrapper, StateDictRestorableObjectWrapper,
                                            StateFileRestorableObject, StateFileRestorableObjectWrapper,
                                            TrainService)
from mmlib.util.init_from_file import create_object

logger = logging.getLogger(__name__)

DATA = "data"
DATALOADER = "dataloader"
OPTIMIZER = "optimizer"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
_STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


class ImageFolderDataset(torch.utils.data.Dataset):
    """Images in one sub-directory per class (like torchvision's ImageFolder), as normalised CHW tensors."""

    def __init__(self, root: str, image_size: int = 64):
        self.root = root
        self.image_size = int(image_size)
        self.classes = sorted(entry.name for entry in os.scandir(root) if entry.is_dir())
        if not self.classes:
            raise FileNotFoundError(f"no class folders in {root!r}: expected one sub-directory of images per class")
        self.samples = [(os.path.join(root, name, file_name), label)
                        for label, name in enumerate(self.classes)
                        for file_name in sorted(os.listdir(os.path.join(root, name)))
                        if file_name.lower().endswith(IMAGE_EXTENSIONS)]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        with Image.open(path) as image:
            image = image.convert("RGB").resize((self.image_size, self.image_size), Image.Resampling.BILINEAR)
        pixels = torch.from_numpy(numpy.asarray(image, dtype=numpy.float32) / 255.0).permute(2, 0, 1)
        return (pixels - _MEAN) / _STD, label


class SGDOptimizer(torch.optim.SGD, StateFileRestorableObject):
    """SGD whose state (momentum buffers, step settings) is a file: torch.save, read back with weights_only."""

    def save_instance_state(self, path: str) -> None:
        torch.save(self.state_dict(), path)

    def restore_instance_state(self, path: str) -> None:
        self.load_state_dict(torch.load(path, weights_only=True))


class ImageClassificationTrainService(TrainService):
    """Trains a classifier with cross-entropy on the batches of `state_objs['dataloader']`."""

    # A train service names the train kwargs it takes (recovery passes it those stored with it), where the base
    # class's signature (the original API's) takes any.
    def train(self, model: torch.nn.Module, number_batches: Optional[int] = None) -> None:  # type: ignore[override]
        """Train on the first `number_batches` batches (all when None), logging each batch."""
        loader = self.state_objs[DATALOADER].instance
        optimizer = self._optimizer(model)
        loss_function = torch.nn.CrossEntropyLoss()
        total = len(loader) if number_batches is None else min(number_batches, len(loader))
        model.train()
        for batch, (inputs, targets) in enumerate(itertools.islice(loader, total), start=1):
            optimizer.zero_grad()
            loss = loss_function(model(inputs), targets)
            loss.backward()
            optimizer.step()
            logger.info("trained batch %d/%d, loss %.4f", batch, total, loss.item())

    def _optimizer(self, model: torch.nn.Module) -> SGDOptimizer:
        """The live optimizer, or the restored one bound to `model`'s parameters."""
        wrapper = self.state_objs[OPTIMIZER]
        if wrapper.instance is None:
            wrapper.restore_instance({"params": model.parameters()})
        return wrapper.instance


class ImageClassificationTrainWrapper(StateDictRestorableObjectWrapper):
    """Restores the image-classification train service and its dataset, data loader and optimizer."""

    def restore_instance(self, file_pers_service: FilePersistenceService,
                         dict_pers_service: DictPersistenceService, restore_root: str) -> None:
        data = self.load_state_obj(DATA, RestorableObjectWrapper, file_pers_service, dict_pers_service,
                                   restore_root)
        data.restore_instance()
        loader = self.load_state_obj(DATALOADER, RestorableObjectWrapper, file_pers_service, dict_pers_service,
                                     restore_root)
        loader.restore_instance({"dataset": data.instance})
        optimizer = self.load_state_obj(OPTIMIZER, StateFileRestorableObjectWrapper, file_pers_service,
                                        dict_pers_service, restore_root)
        self.instance = create_object(code=self._code_path(), class_name=self.class_name)
        self.instance.state_objs = {DATA: data, DATALOADER: loader, OPTIMIZER: optimizer}


def image_classification_train_wrapper(model: torch.nn.Module, data_root: str, batch_size: int = 4,
                                       lr: float = 0.01, momentum: float = 0.9,
                                       image_size: int = 64) -> ImageClassificationTrainWrapper:
    """A live train service for `model` on the images in `data_root`, wrapped for `add_prov_data`.

    At recovery the dataset reads from `current_data_root` of the MMLIB_CONFIG file, where the stored data is
    unpacked; the optimizer is rebuilt on the recovered model's parameters and given the stored state.
    """
    dataset = ImageFolderDataset(data_root, image_size)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=0)
    optimizer = SGDOptimizer(model.parameters(), lr=lr, momentum=momentum)
    service = ImageClassificationTrainService()
    service.state_objs = {
        DATA: RestorableObjectWrapper(init_args={"image_size": image_size}, config_args={"root": CURRENT_DATA_ROOT},
                                      instance=dataset),
        DATALOADER: RestorableObjectWrapper(import_cmd="from torch.utils.data import DataLoader",
                                            init_args={"batch_size": batch_size, "shuffle": True, "num_workers": 0},
                                            init_ref_type_args=["dataset"], instance=loader),
        OPTIMIZER: StateFileRestorableObjectWrapper(init_args={"lr": lr, "momentum": momentum},
                                                    init_ref_type_args=["params"], instance=optimizer),
    }
    return ImageClassificationTrainWrapper(instance=service)
