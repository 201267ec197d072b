"""`mmlib.diff` and `mmlib diff`: which tensors two models differ in, from their stored weight hashes alone, and with
values how far each changed tensor moved (checked against the same figures computed with torch)."""

import json
import os
import shutil

import pytest
import torch
from torch import nn

import mmlib
from mmlib import model_diff
from mmlib.errors import IncompatibleModelError, InvalidArgumentError, ModelNotFoundError
from mmlib.save import ProvenanceSaveService
from mmlib.refs import claim_version
from save_helpers import run_cli
from tiny_models import TinyNet, tiny_input

FC = ["fc.weight", "fc.bias"]


class TinyNetWithHead(TinyNet):
    """TinyNet with a second classifier: two tensors more."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(5, 2)


class TinyNetWithMoreClasses(TinyNet):
    """TinyNet with 7 classes instead of 5: a classifier of another shape."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4 * 4 * 4, 7)


def _state(model: nn.Module) -> dict:
    return {key: value.clone() for key, value in model.state_dict().items()}


def _fine_tune_last_layer(model: nn.Module) -> None:
    """One SGD step on the classifier only, the rest of the model (batch norm statistics too) left as it is."""
    model.eval()
    optimizer = torch.optim.SGD(model.fc.parameters(), lr=0.1)
    model(tiny_input()).sum().backward()
    optimizer.step()
    model.train()


@pytest.fixture
def tuned(location):
    """(store location, state dict of net:v1, of net:v2): v2 is v1 with its last layer fine-tuned."""
    model = TinyNet()
    mmlib.save(model, location, name="net")
    before = _state(model)
    _fine_tune_last_layer(model)
    mmlib.save(model, location, name="net")
    return location, before, _state(model)


def test_fine_tuning_the_last_layer_changes_exactly_that_layer(tuned):
    location, before, after = tuned
    result = mmlib.diff("net:v1", "net:v2", location)
    assert (result.changed, result.added, result.removed) == (FC, [], [])
    assert result.unchanged == len(after) - 2 and not result.identical and not result.values
    assert all(change.max_abs is None and change.old_shape is None for change in result.changes)
    reverse = mmlib.diff("net:v2", "net", location)  # the same model twice
    assert reverse.identical and reverse.unchanged == len(after)


def test_identical_versions_differ_in_nothing(tmp_path):
    store = str(tmp_path / "store")
    model = TinyNet()
    first = mmlib.save(model, store, name="net")
    second = mmlib.save(model, store, name="net")
    result = mmlib.diff(first.id[:8], "net:v2", store=store)
    assert (result.old_id, result.new_id) == (first.id, second.id)
    assert result.identical and result.changes == [] and result.unchanged == len(model.state_dict())
    assert mmlib.diff("net:v1", "net:v2", store, values=True).to_dict()["changes"] == []


def test_values_match_the_changes_torch_computes(tuned):
    location, before, after = tuned
    result = mmlib.diff("net:v1", "net:v2", location, values=True)
    assert result.values and result.changed == FC and result.reshaped == result.retyped == []
    for change in result.changes:
        old, new = before[change.key].double(), after[change.key].double()
        moved = (new - old).abs()
        assert (change.old_shape, change.new_shape) == (list(old.shape), list(new.shape))
        assert (change.old_dtype, change.new_dtype, change.dtype_change) == ("float32", "float32", "float32")
        assert change.max_abs == pytest.approx(moved.max().item(), rel=1e-12) and change.max_abs > 0
        assert change.mean_abs == pytest.approx(moved.mean().item(), rel=1e-12)
        assert change.max_rel == pytest.approx(moved.max().item() / old.abs().max().item(), rel=1e-12)
        assert change.mean_rel == pytest.approx(moved.mean().item() / old.abs().mean().item(), rel=1e-12)


def test_added_and_removed_tensors(tmp_path):
    store = str(tmp_path / "store")
    plain = mmlib.save(TinyNet(), store, name="net")
    headed = mmlib.save(TinyNetWithHead(), store, name="net")  # a new architecture: a snapshot
    grown = mmlib.diff(plain.id, headed.id, store, values=True)
    assert grown.added == ["head.weight", "head.bias"] and grown.removed == []
    added = {change.key: change for change in grown.changes if change.change == model_diff.ADDED}
    assert added["head.weight"].new_shape == [2, 5] and added["head.weight"].old_shape is None
    assert added["head.weight"].max_abs is None and added["head.weight"].shape_change == "(2, 5)"
    shrunk = mmlib.diff(headed.id, plain.id, store)
    assert shrunk.removed == ["head.weight", "head.bias"] and shrunk.added == []


def test_a_dtype_change_is_found_and_measured(tmp_path):
    store = str(tmp_path / "store")
    model = TinyNet()
    mmlib.save(model, store, name="net")
    before = _state(model)
    model.half()
    mmlib.save(model, store, name="net")
    floats = [key for key, value in before.items() if value.is_floating_point()]
    assert mmlib.diff("net:v1", "net:v2", store).changed == floats  # the hashes cover the dtype
    result = mmlib.diff("net:v1", "net:v2", store, values=True)
    assert result.retyped == floats and result.reshaped == [] and "bn.num_batches_tracked" not in result.changed
    weight = next(change for change in result.changes if change.key == "conv.weight")
    assert weight.dtype_change == "float32 -> float16" and weight.shape_change == "(4, 3, 3, 3)"
    rounded = (before["conv.weight"].half().double() - before["conv.weight"].double()).abs()
    assert weight.max_abs == pytest.approx(rounded.max().item(), rel=1e-12) and 0 < weight.max_abs < 1e-3


def test_a_changed_shape_is_named_without_figures(tmp_path):
    store = str(tmp_path / "store")
    first = mmlib.save(TinyNet(), store, name="net")
    second = mmlib.save(TinyNetWithMoreClasses(), store, name="net")
    result = mmlib.diff(first.id, second.id, store, values=True)
    assert result.reshaped == FC and result.retyped == []
    weight = result.changes[result.changed.index("fc.weight")]
    assert weight.shape_change == "(5, 64) -> (7, 64)" and weight.max_abs is None
    assert result.to_dict()["reshaped"] == FC


def test_without_values_no_blob_is_read(tmp_path):
    """Every blob of the store deleted, the diff still names the changed, added and removed tensors: it reads the
    model documents alone. Recovering, which needs the weights, then fails."""
    location = str(tmp_path / "store")
    model = TinyNet()
    mmlib.save(model, location, name="net")
    _fine_tune_last_layer(model)
    mmlib.save(model, location, name="net")
    mmlib.save(TinyNetWithHead(), location, name="net")
    expected = [mmlib.diff(old, new, location).to_dict() for old, new in (("net:v1", "net:v2"), ("net:v2", "net:v3"))]
    shutil.rmtree(os.path.join(location, "blobs"))
    found = [mmlib.diff(old, new, location).to_dict() for old, new in (("net:v1", "net:v2"), ("net:v2", "net:v3"))]
    assert found == expected and found[0]["changed"] == FC and found[1]["added"] == ["head.weight", "head.bias"]
    with pytest.raises(ModelNotFoundError):
        mmlib.diff("net:v1", "net:v2", location, values=True)


def test_a_provenance_version_without_a_recorded_hash_needs_values(tmp_path, monkeypatch):
    from mmlib.constants import MMLIB_CONFIG
    from mmlib.demo.image_classification import image_classification_train_wrapper
    from mmlib.demo.image_data import generate_image_dataset
    from provenance_helpers import TinyNet as ImageNet, prov_save_info
    from save_helpers import save_info

    config = tmp_path / "mmlib.ini"
    config.write_text(f"[VALUES]\ncurrent_data_root = {tmp_path / 'data_root'}\n")
    monkeypatch.setenv(MMLIB_CONFIG, str(config))
    raw_data = generate_image_dataset(str(tmp_path / "images"), images_per_class=2, image_size=16)
    store = mmlib.open_store(str(tmp_path / "store"))
    service = ProvenanceSaveService(*store)
    model = ImageNet()
    base_id = service.save_model(save_info(model))
    version_id = service.save_model(prov_save_info(model, base_id, raw_data,
                                                   image_classification_train_wrapper(model, raw_data)))
    claim_version(store.dict_pers_service, "trained", version_id, {}, {})
    with pytest.raises(IncompatibleModelError, match="values=True"):
        mmlib.diff(base_id, "trained", store)


def test_references_are_resolved_and_bad_arguments_refused(tuned):
    location, _, _ = tuned
    with pytest.raises(ModelNotFoundError, match="net"):
        mmlib.diff("net:v1", "net:v9", location)
    with pytest.raises(InvalidArgumentError, match="values"):
        mmlib.diff("net:v1", "net:v2", location, values="yes")
    assert mmlib.diff is model_diff.diff and mmlib.ModelDiff is model_diff.ModelDiff


def test_the_command_prints_a_table_json_and_measured_values(tuned, capsys):
    location, before, after = tuned
    code, out, _ = run_cli(capsys, "--store", location, "diff", "net:v1", "net:v2")
    assert code == 0 and "net:v1" in out and "2 changed, 0 added, 0 removed" in out
    assert [line.split() for line in out.splitlines() if line.startswith("changed")] == [
        ["changed", key] for key in FC]
    code, out, _ = run_cli(capsys, "--store", location, "diff", "net:v1", "net:v2", "--json")
    assert code == 0 and json.loads(out)["changed"] == FC and json.loads(out)["values"] is False
    code, out, _ = run_cli(capsys, "--store", location, "diff", "net:v1", "net:v2", "--values")
    moved = (after["fc.bias"].double() - before["fc.bias"].double()).abs().max().item()
    row = next(line.split() for line in out.splitlines() if line.startswith("changed  fc.bias"))
    assert code == 0 and "MAX ABS" in out and row[2:5] == ["(5,)", "float32", f"{moved:.4g}"]
    code, _, err = run_cli(capsys, "--store", location, "diff", "net:v1", "nothing:v1")
    assert code == 2 and "nothing" in err
