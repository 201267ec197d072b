"""Update recoveries stream each blob into the recovered tensors: bit-exact for every dtype, odd and empty sizes, tied
weights and every codec, at every depth of a chain with keyframes in update blobs; no blob is read whole."""

import threading

import pytest
import torch

from mmlib.approaches.update import WeightUpdateSaveService
from mmlib.approaches.update_stream import StreamedRecovery
from mmlib.errors import IntegrityError
from mmlib.persistence import FileSystemPersistenceService, SQLiteDictPersistenceService
from mmlib.util.concurrency import SMALL_ITEM_BYTES
from mmlib.util.delta import DeltaCodec
from mmlib.equal import state_dict_equal
from save_helpers import save_info
from test_save_update import drift, snapshot_of
from zoo_models import EveryDtype, TiedDecoderLM


class OddSizes(torch.nn.Module):
    """Tensors of sizes that fit no block or plane evenly, an empty one, and a large one (decoded in a worker)."""

    def __init__(self):
        super().__init__()
        self.odd = torch.nn.Parameter(torch.randn(7, 13))
        self.register_buffer("empty", torch.zeros(0, 3))
        self.register_buffer("halves", torch.randn(1031).half())
        self.large = torch.nn.Parameter(torch.randn(600, 1001))


class LargeThenSmall(torch.nn.Module):
    """One tensor decoded in a worker, then more small ones (decoded in the reading thread) than may be in flight."""

    def __init__(self):
        super().__init__()
        self.large = torch.nn.Parameter(torch.randn(600, 1001))
        for index in range(8):
            self.register_parameter(f"small{index}", torch.nn.Parameter(torch.randn(16)))


def _changed(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every tensor changed: floats drift, other dtypes get new random bit patterns."""
    if isinstance(model, EveryDtype):
        model.randomize(seed)
        with torch.no_grad():
            model.weight.add_(1)
        return model
    torch.manual_seed(seed)
    return drift(model)


@pytest.fixture
def local_stores(tmp_path):
    return FileSystemPersistenceService(str(tmp_path / "blobs")), SQLiteDictPersistenceService(
        str(tmp_path / "meta.sqlite"))


@pytest.mark.parametrize("codec", ["sub-zigzag-planes-zstd1", "xor-zstd3", "plain-shuffle-zstd3"])
@pytest.mark.parametrize("build", [EveryDtype, OddSizes, TiedDecoderLM], ids=["every-dtype", "odd-sizes", "tied"])
def test_every_version_of_a_chain_streams_back_bit_exactly(local_stores, codec, build):
    torch.manual_seed(0)
    model = build()
    service = WeightUpdateSaveService(*local_stores, codec=codec, keyframe_interval=3, cache_size=0)
    ids, states = [service.save_model(save_info(model))], [snapshot_of(model)]
    for version in range(1, 6):  # versions 3 stores full copies in its update blob; 4 and 5 deltas of them
        ids.append(service.save_model(save_info(_changed(model, version), base_model_id=ids[-1])))
        states.append(snapshot_of(model))
    for model_id, state in zip(ids[1:], states[1:]):
        recovered = WeightUpdateSaveService(*local_stores).recover_model(model_id, execute_checks=True).model
        assert state_dict_equal(recovered.state_dict(), state)
    if build is TiedDecoderLM:
        assert recovered.head.weight is recovered.token_embedding.weight


def test_a_recovery_reads_no_blob_whole(local_stores, monkeypatch):
    model = OddSizes()
    service = WeightUpdateSaveService(*local_stores)
    base_id = service.save_model(save_info(model))
    update_id = service.save_model(save_info(_changed(model, 1), base_model_id=base_id))
    monkeypatch.setattr(local_stores[0], "read_bytes", lambda *args: pytest.fail("a blob was read whole"))
    recovered = WeightUpdateSaveService(*local_stores).recover_model(update_id).model
    assert state_dict_equal(recovered.state_dict(), model.state_dict())


def test_a_tensor_said_to_live_outside_the_lineage_is_refused(local_stores, monkeypatch):
    model = OddSizes()
    service = WeightUpdateSaveService(*local_stores)
    base_id = service.save_model(save_info(model))
    update_id = service.save_model(save_info(_changed(model, 1), base_model_id=base_id))
    original = StreamedRecovery.__init__

    def without_snapshot(self, model_id, lineage, open_blob):
        original(self, model_id, lineage[:1], open_blob)  # the lineage as if it ended at the version

    monkeypatch.setattr(StreamedRecovery, "__init__", without_snapshot)
    with pytest.raises(IntegrityError, match="not in its lineage"):
        WeightUpdateSaveService(*local_stores).recover_model(update_id)


def test_small_tensors_are_read_and_decoded_while_a_large_one_decodes(local_stores, monkeypatch):
    """The in-flight bound counts the payloads waiting for a worker, not small tensors already decoded: before, the
    reader waited for each large decode once a few small tensors followed it, and the workers took turns."""
    model = LargeThenSmall()
    service = WeightUpdateSaveService(*local_stores)
    base_id = service.save_model(save_info(model))
    update_id = service.save_model(save_info(_changed(model, 1), base_model_id=base_id))
    small_decoded, all_small_decoded, large_saw_them = [], threading.Event(), []
    decode_into = DeltaCodec.decode_into

    def watched(codec, data, target, size):
        if target.nbytes >= SMALL_ITEM_BYTES:
            large_saw_them.append(all_small_decoded.wait(timeout=5))
        else:
            small_decoded.append(size)
            if len(small_decoded) == 8:
                all_small_decoded.set()
        decode_into(codec, data, target, size)

    monkeypatch.setattr(DeltaCodec, "decode_into", watched)
    recovered = WeightUpdateSaveService(*local_stores).recover_model(update_id, execute_checks=True).model
    assert large_saw_them == [True]
    assert state_dict_equal(recovered.state_dict(), model.state_dict())
