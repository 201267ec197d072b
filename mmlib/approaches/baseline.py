"""The baseline approach: every model version is a full snapshot."""

import logging

from typing import Optional

from mmlib.approaches.base import AbstractSaveService, DeviceLike
from mmlib.save_info import ModelSaveInfo
from mmlib.schema.restored_model_info import RestoredModelInfo

logger = logging.getLogger(__name__)


class BaselineSaveService(AbstractSaveService):
    """Stores every model as a full snapshot (the paper's baseline approach)."""

    _approach = "baseline"

    def save_model(self, save_info: ModelSaveInfo) -> str:
        self._validate(save_info)
        with self._saving():
            model_id = self._save_snapshot(save_info)
        logger.debug("saved model %s as a full snapshot", model_id)
        return model_id

    def recover_model(self, model_id: str, execute_checks: bool = True,
                      device: Optional[DeviceLike] = None) -> RestoredModelInfo:
        with self._recovering(model_id, execute_checks, device) as target:
            model_info = self._load_model_info(model_id)
            model, _ = self._recover_snapshot(model_info, execute_checks, target)
        return RestoredModelInfo(model=model, model_id=model_id)
