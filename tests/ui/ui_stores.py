"""Stores for the web view's tests: a few names, aliases, tags that need escaping, an unnamed model, a model whose
document was damaged and one whose weights blob is gone; for the browser tests also a 20-version lineage that mixes
updates, snapshots and provenance versions."""

from dataclasses import dataclass, field

import torch

import mmlib
from mmlib.constants import ID, MMLIB_CONFIG
from mmlib.demo.image_classification import image_classification_train_wrapper
from mmlib.demo.image_data import generate_image_dataset
from mmlib.persistence.store import Store
from mmlib.pruning import weights_blob
from mmlib.refs import claim_version
from mmlib.save import ProvenanceSaveService
from mmlib.schema.model_info import MODEL_INFO, STORE_TYPE
from provenance_helpers import TinyNet as ImageNet, save_trained_version
from tiny_models import TinyNet

# A tag value and a metric name that would run script in a page that did not escape them.
HOSTILE_TAG = "<script>alert('tag')</script>"
HOSTILE_METRIC = "<img src=x onerror=alert(1)>"
LINEAGE = "classifier"
# v1 a snapshot, v2-v8 updates, v9 a snapshot on v8, v10-v12 provenance versions (their base is a snapshot or a
# provenance version), v13 a snapshot on v12, v14-v20 updates
LINEAGE_PLAN = ["snapshot"] + ["update"] * 7 + ["rebase"] + ["provenance"] * 3 + ["rebase"] + ["update"] * 7


@dataclass
class BuiltStore:
    """What a test store holds: the ids of its versions by reference (`detector:v1`, ...) and its damaged models."""

    ids: dict[str, str] = field(default_factory=dict)
    broken: str = ""  # a model whose document names a store type that does not exist
    lost: str = ""  # a model whose weights blob was deleted


def _nudge(model: torch.nn.Module, name: str) -> None:
    """Change the weights of one layer, as fine-tuning it would."""
    with torch.no_grad():
        getattr(model, name).weight.add_(0.05)


def build_small(store: Store) -> BuiltStore:
    """`detector` v1-v3 (an alias `production` on v2, tags and metrics, one tag and one metric hostile), `other` v1,
    an unnamed model, and two damaged ones: `broken:v1` (its document edited) and `lost:v1` (its weights gone)."""
    built = BuiltStore()
    model = TinyNet()
    for number, accuracy in enumerate((0.81, 0.84, 0.83), start=1):
        if number > 1:
            _nudge(model, "fc")
        version = mmlib.save(model, store, name="detector", tags={"data": "coco", "note": HOSTILE_TAG},
                             metrics={"val_acc": accuracy, HOSTILE_METRIC: number})
        built.ids[version.ref] = version.id
    mmlib.set_alias(store, "detector:v2", "production")
    built.ids["other:v1"] = mmlib.save(TinyNet(), store, name="other", tags={"data": "imagenet"}).id
    built.ids["unnamed"] = mmlib.save(TinyNet(), store).id
    built.broken = mmlib.save(TinyNet(), store, name="broken").id
    built.lost = mmlib.save(TinyNet(), store, name="lost").id
    damage(store, built)
    return built


def damage(store: Store, built: BuiltStore) -> None:
    """Damage `built.broken`'s document (edited to name a store type that does not exist) and delete `built.lost`'s
    weights, through each backend's own interface."""
    dps = store.dict_pers_service
    document = dps.recover_dict(built.broken, MODEL_INFO)
    dps.save_dict({**document, ID: built.broken, STORE_TYPE: "teleported"}, MODEL_INFO)
    store.file_pers_service.delete_blob(weights_blob(store, built.lost))


def build_lineage(store: Store, data_dir: str, monkeypatch) -> dict[str, str]:
    """The 20 versions of LINEAGE (LINEAGE_PLAN) with tags and metrics, an alias on v5 and one on v11; their ids by
    reference. Provenance versions are trained on a small generated image set (MMLIB_CONFIG set for recovery)."""
    config = f"{data_dir}/mmlib.ini"
    with open(config, "w", encoding="utf-8") as handle:
        handle.write(f"[VALUES]\ncurrent_data_root = {data_dir}/data_root\n")
    monkeypatch.setenv(MMLIB_CONFIG, config)
    raw_data = generate_image_dataset(f"{data_dir}/images", images_per_class=2, image_size=16)
    service = ProvenanceSaveService(*store)
    model = ImageNet()
    wrapper = image_classification_train_wrapper(model, raw_data, image_size=16)
    ids: dict[str, str] = {}
    for number, kind in enumerate(LINEAGE_PLAN, start=1):
        tags, metrics = {"stage": kind}, {"val_loss": round(1 / number, 4)}
        if kind == "provenance":
            model_id = save_trained_version(service, model, ids[f"{LINEAGE}:v{number - 1}"], raw_data, wrapper)
            claim_version(store.dict_pers_service, LINEAGE, model_id, tags, metrics)
        else:
            if kind == "update":
                _nudge(model, "classifier")
            model_id = mmlib.save(model, store, name=LINEAGE, tags=tags, metrics=metrics,
                                  base=f"{LINEAGE}:latest" if kind == "rebase" else None,
                                  approach="snapshot" if kind != "update" else None).id
        ids[f"{LINEAGE}:v{number}"] = model_id
    mmlib.set_alias(store, f"{LINEAGE}:v5", "production")
    mmlib.set_alias(store, f"{LINEAGE}:v11", "candidate")
    return ids
