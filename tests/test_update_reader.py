"""UpdateReader on hand-made stores: a stored delta whose keyframe cannot be found is an IntegrityError."""

import io
from types import SimpleNamespace

import pytest
import torch

from mmlib.approaches.update_format import StoredTensor, write_update
from mmlib.approaches.update_reader import UpdateReader
from mmlib.errors import IncompatibleModelError, IntegrityError
from mmlib.schema.store_type import ModelStoreType
from mmlib.util.delta import DeltaCodec

_PLAIN, _XOR = DeltaCodec(), DeltaCodec("xor")


def _stored(codec: DeltaCodec, delta_of, depth: int, value: torch.Tensor, base=None) -> StoredTensor:
    return StoredTensor(codec, delta_of, depth, value.dtype, tuple(value.shape), codec.encode(value, base))


def _no_stream(reference: str):
    pytest.fail(f"blob {reference} was streamed: these tests read whole blobs")


def _reader(updates: dict[str, dict[str, StoredTensor]], snapshot_state: dict[str, torch.Tensor]) -> UpdateReader:
    """A reader over model `snap` (a full snapshot holding `snapshot_state`) and the given update models."""
    infos = {"snap": SimpleNamespace(store_type=ModelStoreType.FULL_MODEL,
                                     recover_info=SimpleNamespace(parameters_file="snap-weights"))}
    blobs = {}
    for model_id, stored in updates.items():
        infos[model_id] = SimpleNamespace(store_type=ModelStoreType.WEIGHT_UPDATES,
                                          recover_info=SimpleNamespace(update=SimpleNamespace(reference_id=model_id)))
        sink = io.BytesIO()
        write_update(sink, "snap", list(stored), {}, stored)
        blobs[model_id] = sink.getvalue()
    return UpdateReader(infos.__getitem__, blobs.__getitem__, lambda reference: dict(snapshot_state), _no_stream)


def test_a_delta_chain_decodes_from_the_snapshot_and_from_an_update_holding_the_keyframe():
    base, new = torch.arange(4.0), torch.arange(4.0) + 0.5
    reader = _reader({"full": {"w": _stored(_PLAIN, None, 0, base)},
                      "on-snap": {"w": _stored(_XOR, "snap", 1, new, base)},
                      "on-full": {"w": _stored(_XOR, "full", 1, new, base)}}, {"w": base})
    values = reader.tensors({"w": "on-snap"}) | {"v": reader.tensors({"w": "on-full"})["w"]}
    assert torch.equal(values["w"], new) and torch.equal(values["v"], new)
    assert torch.equal(reader.tensors({"w": "snap"})["w"], base)


@pytest.mark.parametrize("updates, snapshot_state", [
    ({"u": {"w": _stored(_XOR, "snap", 1, torch.ones(2), torch.zeros(2))}}, {}),  # the snapshot lacks it
    ({"u": {"w": _stored(_XOR, "k", 1, torch.ones(2), torch.zeros(2))}, "k": {}}, {}),  # the keyframe blob lacks it
    ({"u": {"w": _stored(_XOR, "k", 1, torch.ones(2), torch.zeros(2))},  # the keyframe is itself a delta
      "k": {"w": _stored(_XOR, "snap", 1, torch.zeros(2), torch.zeros(2))}}, {"w": torch.zeros(2)}),
    ({"u": {"w": _stored(_XOR, "snap", 0, torch.ones(2), torch.zeros(2))}}, {"w": torch.zeros(2)}),  # depth 0
], ids=["missing-in-snapshot", "missing-in-keyframe-blob", "keyframe-is-a-delta", "delta-at-depth-0"])
def test_a_delta_without_a_keyframe_to_apply_it_to_is_an_integrity_error(updates, snapshot_state):
    with pytest.raises(IntegrityError, match=r"tensor 'w' of model u has no keyframe to apply it to; run "
                                             "`mmlib verify` and restore the store from a backup"):
        _reader(updates, snapshot_state).tensors({"w": "u"})


def test_a_version_stored_by_another_approach_names_the_service_to_recover_it_with():
    infos = {"prov": SimpleNamespace(store_type=ModelStoreType.PROVENANCE)}
    reader = UpdateReader(infos.__getitem__, {}.__getitem__, lambda reference: {}, _no_stream)
    with pytest.raises(IncompatibleModelError, match=r"model prov is stored as provenance, not as weights or weight "
                                                     r"updates; recover it with the save service that stored it "
                                                     r"\(e.g. ProvenanceSaveService\)"):
        reader.locations("prov")
