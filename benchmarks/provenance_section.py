"""The provenance part of the benchmark: versions saved as provenance (dataset + training), recovered by retraining.

Uses `mmlib.demo`'s image-classification train service and `benchmarks.provenance`'s storage breakdown by part.
Each timed round uses a fresh store: a base snapshot (untimed), then per version the provenance save (timed),
the live training (untimed), `add_weights_hash_info` (timed) and the `torch.save` anchor of the trained model
(timed). So version 1 of every round pays for storing the dataset, as a first version does. The bytes each
version's save and hash add to the store are measured untimed, also as a share of the base snapshot's: only a
checkpoint (every `checkpoint_interval` versions) stores the optimizer's momentum buffers. Recovery of version
k recovers the base and retrains k versions; the unpacked dataset is removed before each timed recovery, so
every recovery unpacks it as a fresh node would.
"""

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch

from benchmarks import provenance as helpers
from benchmarks.common import (ANCHOR, MODEL_LABELS, MOMENTUM, Progress, Step, median_seconds, ratio, raw_load,
                               total_bytes)
from mmlib.approaches.base import AbstractSaveService
from mmlib.constants import CURRENT_DATA_ROOT, MMLIB_CONFIG, VALUES
from mmlib.demo.image_classification import image_classification_train_wrapper
from mmlib.demo.image_data import generate_image_dataset
from mmlib.deterministic import deterministic
from mmlib.equal import state_dict_equal
from mmlib.models import REFERENCE_MODELS
from mmlib.persistence import open_store
from mmlib.save import ProvenanceSaveService
from mmlib.schema.environment import Environment
from mmlib.schema.save_info_builder import ModelSaveInfoBuilder

logger = logging.getLogger(__name__)

DATASET = {"num_classes": 3, "images_per_class": 8, "image_size": 64}
TRAIN_BATCH_SIZE = 4
TRAIN_KWARGS = {"number_batches": 2}
DATASET_PART = "dataset"


@dataclass
class _Round:
    """One timed round: its own store, the live model and train service, and the versions saved so far."""

    service: ProvenanceSaveService
    model: torch.nn.Module
    wrapper: Any
    ids: list[str]
    store_dir: str
    base_bytes_on_disk: int
    snapshot_bytes: int
    anchors: list[str] = field(default_factory=list)
    trained: list[dict[str, torch.Tensor]] = field(default_factory=list)
    bytes_before_save: int = 0
    growth: list[int] = field(default_factory=list)


class ProvenanceBench:
    """Provenance versions of one model: TTS, TTR (including retraining) and storage per version."""

    def __init__(self, key: str, raw_data: str, data_root: str, versions: int, repeats: int, env: Environment,
                 progress: Progress, root: str):
        self.key, self.label, self.cls = key, MODEL_LABELS.get(key, key), REFERENCE_MODELS[key]
        self.raw_data, self.data_root, self.versions, self.repeats = raw_data, data_root, versions, repeats
        self.env, self.progress, self.root = env, progress, root
        self.rounds: dict[int, _Round] = {}

    def _new_round(self, round_index: int) -> _Round:
        """A fresh store holding the base model as a full snapshot (untimed)."""
        store_dir = os.path.join(self.root, f"round-{round_index}")
        service = ProvenanceSaveService(*open_store(store_dir))
        torch.manual_seed(0)
        model = self.cls()
        empty_bytes = helpers.store_bytes(service)
        base_id = service.save_model(ModelSaveInfoBuilder().add_model_info(env=self.env, model=model).build())
        wrapper = image_classification_train_wrapper(model, self.raw_data, batch_size=TRAIN_BATCH_SIZE,
                                                      momentum=MOMENTUM)
        return _Round(service, model, wrapper, [base_id], store_dir, _bytes_on_disk(store_dir),
                      helpers.store_bytes(service) - empty_bytes)

    def _save_step(self, version: int) -> Step:
        def prepare(round_index: int) -> Callable[[], Any]:
            if version == 1:
                self.rounds = {round_index: self._new_round(round_index)}
            state = self.rounds[round_index]
            info = (ModelSaveInfoBuilder().add_model_info(env=self.env, model=state.model, base_model_id=state.ids[-1])
                    .add_prov_data(raw_data_path=self.raw_data, train_kwargs=TRAIN_KWARGS,
                                   train_service_wrapper=state.wrapper)
                    .build())
            state.bytes_before_save = helpers.store_bytes(state.service)
            return lambda: state.ids.append(state.service.save_model(info))
        return prepare

    def _hash_step(self, _version: int) -> Step:
        def prepare(round_index: int) -> Callable[[], Any]:
            state = self.rounds[round_index]
            deterministic(state.wrapper.instance.train, [state.model], TRAIN_KWARGS)
            state.trained.append({name: tensor.clone() for name, tensor in state.model.state_dict().items()})
            return lambda: state.service.add_weights_hash_info(state.ids[-1], state.model)
        return prepare

    def _anchor_save_step(self, version: int) -> Step:
        def prepare(round_index: int) -> Callable[[], Any]:
            state = self.rounds[round_index]
            state.growth.append(helpers.store_bytes(state.service) - state.bytes_before_save)
            path = os.path.join(self.root, f"{ANCHOR}-r{round_index}-v{version}.pt")
            state.anchors.append(path)
            return lambda: torch.save(state.model.state_dict(), path)
        return prepare

    def _recover_step(self, state: _Round, version: int) -> Step:
        def prepare(_round_index: int) -> Callable[[], Any]:
            shutil.rmtree(self.data_root, ignore_errors=True)
            return lambda: state.service.recover_model(state.ids[version], execute_checks=True)
        return prepare

    def run(self) -> dict[str, Any]:
        self.progress(f"{self.label}: provenance: timing saves of {self.versions} versions "
                      f"({self.repeats} fresh stores + warm-up)")
        save_steps: dict[str, Step] = {}
        for version in range(1, self.versions + 1):
            save_steps[f"save/v{version}"] = self._save_step(version)
            save_steps[f"hash/v{version}"] = self._hash_step(version)
            save_steps[f"{ANCHOR}/v{version}"] = self._anchor_save_step(version)
        tts = median_seconds(save_steps, self.repeats)
        state = self.rounds[self.repeats]
        self.progress(f"{self.label}: provenance: timing recoveries (base + retraining) of every version")
        recover_steps: dict[str, Step] = {}
        for version in range(1, self.versions + 1):
            path = state.anchors[version - 1]
            recover_steps[f"{ANCHOR}/v{version}"] = lambda _round, path=path: lambda: raw_load(self.cls, path)
            recover_steps[f"provenance/v{version}"] = self._recover_step(state, version)
        ttr = median_seconds(recover_steps, self.repeats)
        versions = []
        for version in range(1, self.versions + 1):
            model_id = state.ids[version]
            sizes = state.service.model_save_size(model_id)
            recovered = state.service.recover_model(model_id, execute_checks=False).model
            save_s, hash_s = tts[f"save/v{version}"]["median_s"], tts[f"hash/v{version}"]["median_s"]
            anchor_tts, anchor_ttr = tts[f"{ANCHOR}/v{version}"]["median_s"], ttr[f"{ANCHOR}/v{version}"]["median_s"]
            ttr_s = ttr[f"provenance/v{version}"]["median_s"]
            growth = state.growth[version - 1]
            versions.append({
                "name": f"v{version}", "model_id": model_id,
                "storage_bytes": total_bytes(sizes), "storage_breakdown": helpers.breakdown(sizes),
                "size_info": sizes, "stores_training_state": _stores_training_state(state.service, model_id),
                "store_growth_bytes": growth, "store_growth_share_of_snapshot": ratio(growth, state.snapshot_bytes),
                "save_s": save_s, "add_weights_hash_info_s": hash_s, "tts_s": save_s + hash_s,
                "anchor_tts_s": anchor_tts, "tts_ratio_to_anchor": ratio(save_s + hash_s, anchor_tts),
                "ttr_checks_s": ttr_s, "anchor_ttr_s": anchor_ttr, "ttr_ratio_to_anchor": ratio(ttr_s, anchor_ttr),
                "recovered_equal": state_dict_equal(recovered.state_dict(), state.trained[version - 1]),
                "runs": {"save_s": tts[f"save/v{version}"]["runs_s"], "hash_s": tts[f"hash/v{version}"]["runs_s"],
                         "ttr_checks_s": ttr[f"provenance/v{version}"]["runs_s"]},
            })
        dataset_once = versions[0]["storage_breakdown"][DATASET_PART]
        total = dataset_once + sum(v["storage_bytes"] - v["storage_breakdown"][DATASET_PART] for v in versions)
        return {"label": self.label, "versions": versions, "storage_total_bytes": total,
                "store_bytes_on_disk": _bytes_on_disk(state.store_dir) - state.base_bytes_on_disk,
                "anchor_bytes": os.path.getsize(state.anchors[0]), "snapshot_bytes": state.snapshot_bytes,
                "checkpoint_interval": state.service.checkpoint_interval,
                **helpers.growth_shares(state.growth, state.snapshot_bytes)}


def _stores_training_state(service: AbstractSaveService, model_id: str) -> bool:
    """Whether a provenance version stores its training state (a checkpoint) or carries it from its base."""
    return not getattr(service._load_model_info(model_id).recover_info.train_info, "carried_state", None)


def _bytes_on_disk(directory: str) -> int:
    """Bytes of every file under `directory`: what a store really takes, however its parts are shared."""
    return sum(os.path.getsize(os.path.join(folder, name))
               for folder, _, names in os.walk(directory) for name in names)


def run(models: list[str], versions: int, repeats: int, work_dir: Optional[str], env: Environment,
        progress: Progress, baseline_bytes: dict[str, Optional[int]]) -> dict[str, Any]:
    """Provenance figures per model, or `available: False` with the reason.

    `baseline_bytes` maps each model to the storage of one baseline snapshot (from the main relations), to
    compare all provenance versions against as many snapshots.
    """
    if not models:
        progress("provenance: skipped (no model was chosen for it with --provenance-models)")
        return {"available": False, "reason": "no model was chosen for it (--provenance-models)"}
    root = tempfile.mkdtemp(prefix="mmlib-bench-provenance-", dir=work_dir)
    previous_config = os.environ.get(MMLIB_CONFIG)
    previous_deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        raw_data = generate_image_dataset(os.path.join(root, "raw-data"), **DATASET)
        data_root = os.path.join(root, "data-root")
        config = os.path.join(root, "mmlib.ini")
        with open(config, "w", encoding="utf-8") as handle:
            handle.write(f"[{VALUES}]\n{CURRENT_DATA_ROOT} = {data_root}\n")
        os.environ[MMLIB_CONFIG] = config
        result: dict[str, Any] = {
            "available": True,
            "description": (f"{versions} provenance versions per model, each trained on the generated dataset "
                            f"({DATASET['num_classes']} classes x {DATASET['images_per_class']} JPEGs of "
                            f"{DATASET['image_size']}x{DATASET['image_size']}; batch {TRAIN_BATCH_SIZE}, "
                            f"{TRAIN_KWARGS['number_batches']} batches per version, SGD with momentum {MOMENTUM}). "
                            "TTS is save_model + add_weights_hash_info; TTR recovers the base and retrains every "
                            f"version up to the one asked for (checks on); medians of {repeats} runs, each save round "
                            "in a fresh store; the dataset is counted once in the totals, and the store's files on "
                            "disk (less the base snapshot) show what it really takes."),
            "dataset": DATASET, "train_kwargs": TRAIN_KWARGS, "train_batch_size": TRAIN_BATCH_SIZE,
            "versions": versions, "models": {},
        }
        for key in models:
            bench = ProvenanceBench(key, raw_data, data_root, versions, repeats, env, progress,
                                    tempfile.mkdtemp(prefix=f"{key}-", dir=root))
            figures = bench.run()
            snapshot = baseline_bytes.get(key)
            figures["baseline_total_bytes"] = None if snapshot is None else snapshot * versions
            figures["storage_ratio_to_baseline"] = None if snapshot is None else ratio(
                figures["storage_total_bytes"], snapshot * versions)
            result["models"][key] = figures
        return result
    finally:
        if previous_config is None:
            os.environ.pop(MMLIB_CONFIG, None)
        else:
            os.environ[MMLIB_CONFIG] = previous_config
        torch.use_deterministic_algorithms(previous_deterministic)
        shutil.rmtree(root, ignore_errors=True)
