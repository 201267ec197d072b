"""Building a stored model: construct it (on the meta device where safe), assign its tensors, restore its layout.

Meta-device construction skips random initialisation, which a rebuild would overwrite anyway. While it runs,
`torch.nn.init`'s functions are patched process-wide (under a lock) to skip meta tensors: another thread that
initialises real tensors meanwhile gets the patched functions, which still initialise them normally.
"""

import collections
import contextlib
import logging
import threading
from typing import Any, Callable, Iterator, Mapping

import torch

from mmlib.errors import IncompatibleModelError, IntegrityError
from mmlib.schema.state_layout import StateLayout, TensorView
from mmlib.util.dtypes import dtype_from_name

logger = logging.getLogger(__name__)

_INIT_FUNCTION_NAMES = [name for name in dir(torch.nn.init) if name.endswith("_") and not name.startswith("_")]
_INIT_PATCH_LOCK = threading.Lock()
CPU = torch.device("cpu")
# What a constructor may raise on the meta device (e.g. reading a tensor's values); then it is built normally.
CONSTRUCTION_ERRORS = (RuntimeError, NotImplementedError, TypeError, ValueError, AttributeError, IndexError)


def _skip_on_meta(init_function):
    def init_unless_meta(tensor, *args, **kwargs):
        if isinstance(tensor, torch.Tensor) and tensor.is_meta:
            return tensor
        return init_function(tensor, *args, **kwargs)
    return init_unless_meta


@contextlib.contextmanager
def meta_construction() -> Iterator[None]:
    """Build modules on the meta device, with `torch.nn.init` skipped for meta tensors (process-wide, locked).

    Initialising a meta tensor has no effect but is slow (the first call imports torch's reference kernels).
    """
    with _INIT_PATCH_LOCK:
        originals = {name: getattr(torch.nn.init, name) for name in _INIT_FUNCTION_NAMES}
        for name, function in originals.items():
            setattr(torch.nn.init, name, _skip_on_meta(function))
        try:
            with torch.device("meta"):
                yield
        finally:
            for name, function in originals.items():
                setattr(torch.nn.init, name, function)


def _plain_tensor_attributes(module: torch.nn.Module) -> Iterator[torch.Tensor]:
    """Tensors a module keeps as plain attributes (outside parameters and buffers), one level into containers."""
    for value in vars(module).values():
        items = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else [value]
        yield from (item for item in items if isinstance(item, torch.Tensor))


def _left_on_meta(model: torch.nn.Module) -> bool:
    """Whether any tensor of the model, stored or not, is still on the meta device."""
    return any(tensor.is_meta for module in model.modules()
               for tensor in (*module._parameters.values(), *module._buffers.values(),
                              *_plain_tensor_attributes(module)) if tensor is not None)


def view_in(root: torch.Tensor, view: TensorView, name: str) -> torch.Tensor:
    """The tensor `name` that `view` places in the memory of `root`; IntegrityError when it does not fit there."""
    if not root.is_contiguous() or view.offset + view.span() > root.numel():
        raise IntegrityError(f"state-dict name {name!r} is recorded as a view of {view.root!r} that does not fit in "
                             f"its {root.numel()} elements; run `mmlib verify` and restore the store from a backup")
    flat = root.reshape(-1)
    return flat.as_strided(view.shape, view.stride, flat.storage_offset() + view.offset)


def stored_and_views(tensors: Mapping[str, torch.Tensor], layout: StateLayout) -> dict[str, torch.Tensor]:
    """The stored tensors and the views of them that the layout records, by state-dict name (aliases aside)."""
    values = dict(tensors)
    for name, view in layout.views.items():
        if view.root not in tensors:
            raise IntegrityError(f"state-dict name {name!r} views the tensor {view.root!r}, which is not stored; "
                                 "run `mmlib verify` and restore the store from a backup")
        values[name] = view_in(tensors[view.root], view, name)
    for name, first in layout.aliases.items():
        if first not in values:
            raise IntegrityError(f"state-dict name {name!r} shares the tensor {first!r}, which is not stored; "
                                 "run `mmlib verify` and restore the store from a backup")
    return values


def _state_to_load(tensors: Mapping[str, torch.Tensor], layout: StateLayout) -> "collections.OrderedDict":
    """The state dict `load_state_dict` gets: stored tensors, their views, aliases (each a tensor object of its
    own over the same memory; `_restore_layout` ties the tied ones), JSON extra states and module versions."""
    state = collections.OrderedDict(stored_and_views(tensors, layout))
    for name, first in layout.aliases.items():
        shared = state[first]
        state[name] = shared.as_strided(shared.shape, shared.stride(), shared.storage_offset())
    state.update(layout.extra_states)
    # load_state_dict reads the module versions from this attribute, where state_dict() puts them.
    state._metadata = collections.OrderedDict(  # type: ignore[attr-defined]
        (prefix, dict(entry)) for prefix, entry in layout.module_metadata.items())
    return state


def _owner(model: torch.nn.Module, name: str) -> tuple[torch.nn.Module, str]:
    path, _, leaf = name.rpartition(".")
    return model.get_submodule(path), leaf


def _restore_layout(model: torch.nn.Module, layout: StateLayout) -> None:
    """Tie shared tensors, cast non-persistent buffers, freeze parameters and set train/eval as saved."""
    for name in layout.tied:
        first_owner, first_leaf = _owner(model, layout.aliases[name])
        shared = first_owner._parameters.get(first_leaf, first_owner._buffers.get(first_leaf))
        owner, leaf = _owner(model, name)
        slots: dict[str, Any] = owner._parameters if leaf in owner._parameters else owner._buffers
        slots[leaf] = shared
    for name, dtype in layout.buffer_dtypes.items():
        owner, leaf = _owner(model, name)
        buffer = owner._buffers.get(leaf)
        if buffer is not None:
            owner._buffers[leaf] = buffer.to(dtype=dtype_from_name(dtype))
    frozen = set(layout.frozen)
    for name, parameter in model.named_parameters(remove_duplicate=False):
        parameter.requires_grad_(name not in frozen)
    in_eval = set(layout.eval_modules)
    for name, module in model.named_modules(remove_duplicate=False):
        module.training = name not in in_eval


def rebuild(factory: Callable[[], torch.nn.Module], tensors: Mapping[str, torch.Tensor], layout: StateLayout,
            device: torch.device = CPU) -> torch.nn.Module:
    """The saved model, built by `factory` and given the stored tensors (assigned, so they keep their dtype), on
    `device`.

    Built on the meta device first; when anything is left there (a tensor attribute, a non-persistent buffer),
    meta construction is not safe for the class, and it is built normally instead (on the CPU, as it was when
    saved; `assign_state` then moves what the constructor made to `device`). Each stored tensor is copied to
    `device` on its own, so no second copy of the whole state is made on the CPU.
    """
    placed = {name: tensor.to(device) for name, tensor in tensors.items()}
    try:
        with meta_construction():
            model = _module_from(factory)
        model.load_state_dict(_state_to_load(placed, layout), assign=True)
        if not _left_on_meta(model):
            _restore_layout(model, layout)
            return model
        logger.debug("%r keeps tensors outside its state dict; building it normally", factory)
    except IncompatibleModelError:
        raise
    except CONSTRUCTION_ERRORS as error:
        logger.debug("meta-device construction of %r failed (%s); building it normally", factory, error)
    return assign_state(_module_from(factory), placed, layout, device)


def assign_state(model: torch.nn.Module, tensors: Mapping[str, torch.Tensor], layout: StateLayout,
                 device: torch.device) -> torch.nn.Module:
    """`model` given `tensors` (stored tensors, as `capture` splits them) on `device` and its `layout` restored;
    buffers outside the state dict are moved to `device` too, a buffer shared by several modules once."""
    placed = {name: tensor.to(device) for name, tensor in tensors.items()}
    model.load_state_dict(_state_to_load(placed, layout), assign=True)
    _restore_layout(model, layout)
    moved: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # id -> (buffer, kept alive so ids stay unique; copy)
    for module in model.modules():
        for name, buffer in module._buffers.items():
            if buffer is not None and buffer.device != device:
                if id(buffer) not in moved:
                    moved[id(buffer)] = (buffer, buffer.to(device))
                module._buffers[name] = moved[id(buffer)][1]
    return model


def _module_from(factory: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    """What `factory` builds, which must be a module (a stored factory may have been changed to build another)."""
    model = factory()
    if not isinstance(model, torch.nn.Module):
        raise IncompatibleModelError(f"{factory!r} builds a {type(model).__name__}, not a torch.nn.Module; the stored "
                                     "class or factory is not the model's: run `mmlib verify`")
    return model

