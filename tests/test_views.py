"""Tensors that share memory without being one tensor (slices, transposes, reshapes, strided views) come back with
their values and dtypes, as views of the same memory where a stored tensor holds them, and pass the checks;
tied tensors (one object under two names) stay one object.
"""

import pytest
import torch

from mmlib.approaches.model_building import rebuild
from mmlib.approaches.model_state import capture
from mmlib.errors import IntegrityError
from mmlib.maintenance import verify
from mmlib.persistence import open_store
from mmlib.save import BaselineSaveService, ProvenanceSaveService, WeightUpdateSaveService
from mmlib.schema.state_layout import StateLayout
from save_helpers import save_info

APPROACHES = {
    "baseline": BaselineSaveService,
    "update": lambda fps, dps: WeightUpdateSaveService(fps, dps, improved_version=False),
    "update_improved": lambda fps, dps: WeightUpdateSaveService(fps, dps, improved_version=True),
    "provenance_snapshot": ProvenanceSaveService,
}


def _grid(rows: int = 4, columns: int = 6, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.arange(rows * columns).reshape(rows, columns).to(dtype)


class ViewsOfABuffer(torch.nn.Module):
    """Buffers that view a registered buffer: a transpose, a slice, a strided flat view, a reshape, a column."""

    def __init__(self):
        super().__init__()
        base = _grid()
        self.register_buffer("a", base.t())
        self.register_buffer("base", base)
        self.register_buffer("b", base[1:])
        self.register_buffer("c", base.view(-1)[::2])
        self.register_buffer("d", base.view(3, 8))
        self.register_buffer("column", base[:, 2])


class ViewsOfAParameter(torch.nn.Module):
    """Buffers and a parameter inside a parameter's memory; a second name for the very same parameter (tied)."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(6, 4)
        self.register_buffer("rows", self.linear.weight.detach()[1:3])
        self.register_buffer("transposed", self.linear.weight.detach().t())
        self.head = torch.nn.Linear(6, 4)
        self.head.weight = self.linear.weight
        self.scale = torch.nn.Parameter(self.linear.bias.detach()[::2])


class OverlappingViews(torch.nn.Module):
    """Overlapping and disjoint views of a registered buffer, in other dtypes too, and a same-shape second view."""

    def __init__(self):
        super().__init__()
        base = _grid(dtype=torch.float64)
        self.register_buffer("base", base)
        self.register_buffer("top", base[0:3])
        self.register_buffer("bottom", base[1:4])
        self.register_buffer("first", base[0])
        self.register_buffer("last", base[3])
        self.register_buffer("middle", base[1:3, 1::2])
        self.register_buffer("again", base.view(4, 6))
        counts = _grid(dtype=torch.int16)
        self.register_buffer("counts", counts)
        self.register_buffer("counts_rows", counts[::2])
        flags = _grid(2, 3, torch.bool)
        self.register_buffer("flags", flags.t())
        self.register_buffer("flag_rows", flags)


class SameViewTwice(torch.nn.Module):
    """Two buffer objects over one memory in one way, a buffer over a parameter's memory, and tied parameters."""

    def __init__(self):
        super().__init__()
        self.register_buffer("x", _grid())
        self.register_buffer("y", self.x.view(4, 6))
        self.linear = torch.nn.Linear(6, 4)
        self.register_buffer("frozen_weight", self.linear.weight.detach())
        self.tied = self.linear


class ViewsWithoutTheirWhole(torch.nn.Module):
    """Views of memory that no state-dict tensor holds whole: overlapping, disjoint and strided ones."""

    def __init__(self):
        super().__init__()
        hidden = _grid()
        self.register_buffer("top", hidden[0:3])
        self.register_buffer("bottom", hidden[1:4])
        self.register_buffer("inside", hidden[1:3, ::2])
        self.register_buffer("apart", hidden[3, 1::2])


MODELS = [ViewsOfABuffer, ViewsOfAParameter, OverlappingViews, SameViewTwice]


def _storage_groups(model: torch.nn.Module) -> list[list[tuple]]:
    """Names of the parameters and buffers over each memory, with each one's offset, shape and strides there."""
    groups: dict[int, list[tuple]] = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        groups.setdefault(tensor.untyped_storage().data_ptr(), []).append(
            (name, tensor.storage_offset() * tensor.element_size(), tuple(tensor.shape), tensor.stride()))
    return sorted(sorted((name, offset - min(entry[1] for entry in group), shape, stride)
                         for name, offset, shape, stride in group) for group in groups.values())


def _tied_groups(model: torch.nn.Module) -> list[list[str]]:
    """Names that are one tensor object."""
    groups: dict[int, list[str]] = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        groups.setdefault(id(tensor), []).append(name)
    return sorted(sorted(names) for names in groups.values() if len(names) > 1)


def _assert_same_values(recovered: torch.nn.Module, original: torch.nn.Module) -> None:
    saved, rebuilt = original.state_dict(keep_vars=True), recovered.state_dict(keep_vars=True)
    assert list(rebuilt) == list(saved)
    for name, value in saved.items():
        assert rebuilt[name].dtype == value.dtype, name
        assert torch.equal(rebuilt[name], value), name
    assert _tied_groups(recovered) == _tied_groups(original)


def _assert_same_views(recovered: torch.nn.Module, original: torch.nn.Module) -> None:
    """Values, dtypes and ties as saved, and every view over the same memory as its whole, as saved."""
    _assert_same_values(recovered, original)
    assert _storage_groups(recovered) == _storage_groups(original)


@pytest.fixture
def store(tmp_path):
    return open_store(str(tmp_path / "store"))


@pytest.mark.parametrize("approach", list(APPROACHES))
@pytest.mark.parametrize("model_class", MODELS, ids=lambda cls: cls.__name__)
def test_views_of_one_memory_come_back_as_views_and_pass_the_checks(store, approach, model_class):
    model = model_class()
    service = APPROACHES[approach](*store)
    model_id = service.save_model(save_info(model))
    for recovering in (service, APPROACHES[approach](*store)):
        _assert_same_views(recovering.recover_model(model_id, execute_checks=True).model, model)
    assert verify(store) == []


@pytest.mark.parametrize("improved", [False, True], ids=["plain", "improved"])
@pytest.mark.parametrize("model_class", MODELS, ids=lambda cls: cls.__name__)
def test_an_update_of_a_model_with_views_comes_back_as_views(store, model_class, improved):
    model = model_class()
    service = WeightUpdateSaveService(*store, improved_version=improved)
    base_id = service.save_model(save_info(model))
    with torch.no_grad():
        for name, tensor in model.state_dict(keep_vars=True).items():
            if name in capture(model).tensors:
                tensor.add_(torch.ones_like(tensor))
    derived_id = service.save_model(save_info(model, base_model_id=base_id))
    assert "update" in service.model_save_size(derived_id)["recover_info"]
    recovered = WeightUpdateSaveService(*store, improved_version=improved).recover_model(derived_id).model
    _assert_same_views(recovered, model)
    assert verify(store) == []


@pytest.mark.parametrize("approach", list(APPROACHES))
def test_two_objects_over_one_memory_in_one_way_are_not_tied_but_tied_parameters_are(store, approach):
    model = SameViewTwice()
    service = APPROACHES[approach](*store)
    recovered = service.recover_model(service.save_model(save_info(model)), execute_checks=True).model
    assert recovered.x is not recovered.y and recovered.x.data_ptr() == recovered.y.data_ptr()
    assert recovered.frozen_weight.data_ptr() == recovered.linear.weight.data_ptr()
    assert recovered.tied.weight is recovered.linear.weight and recovered.tied.bias is recovered.linear.bias
    assert isinstance(recovered.linear.weight, torch.nn.Parameter)
    assert not isinstance(recovered.frozen_weight, torch.nn.Parameter)


@pytest.mark.parametrize("approach", list(APPROACHES))
def test_views_of_memory_no_tensor_holds_whole_keep_their_values(store, approach):
    model = ViewsWithoutTheirWhole()
    service = APPROACHES[approach](*store)
    model_id = service.save_model(save_info(model))
    _assert_same_values(service.recover_model(model_id, execute_checks=True).model, model)


def test_a_view_is_stored_once_inside_its_whole():
    model = ViewsOfABuffer()
    captured = capture(model)
    assert list(captured.tensors) == ["base"]
    assert captured.layout.views["a"].to_list() == ["base", 0, [6, 4], [1, 6]]
    assert captured.layout.views["c"].to_list() == ["base", 0, [12], [2]]
    assert StateLayout.from_document(captured.layout.to_document()) == captured.layout


def test_a_recovered_view_follows_its_whole(store):
    service = BaselineSaveService(*store)
    recovered = service.recover_model(service.save_model(save_info(ViewsOfABuffer()))).model
    recovered.base.fill_(7.0)
    assert all(bool((tensor == 7.0).all()) for tensor in (recovered.a, recovered.b, recovered.c, recovered.column))


@pytest.mark.parametrize("view", [["base", 20, [2, 3], [6, 1]], ["base", 0, [5], [6]], ["missing", 0, [1], [1]]],
                         ids=["past_the_end", "strided_past_the_end", "unknown_root"])
def test_a_stored_view_that_does_not_fit_its_whole_is_an_integrity_error(view):
    layout = StateLayout.from_document({"views": [["a", *view]]})
    with pytest.raises(IntegrityError, match="'a'"):
        rebuild(ViewsOfABuffer, {"base": _grid()}, layout)


@pytest.mark.parametrize("document", [{"views": [["a", "base", -1, [1], [1]]]}, {"views": [["a", "base", 0, [2], []]]},
                                      {"views": [["a", "base", 0, [True], [1]]]}, {"views": "a"}], ids=str)
def test_a_damaged_view_record_is_an_integrity_error(document):
    with pytest.raises(IntegrityError, match="state layout"):
        StateLayout.from_document(document)
