"""A model's state as mmlib stores it, and the check that the saved model can be built again.

`capture(model)` splits `model.state_dict()` into the tensors to store, each once however many names
share it, and a JSON-able `StateLayout` with the rest a faithful rebuild needs: which names share a tensor
(tied weights), which tensors lie inside the memory of another in another way (slices, transposes,
reshapes: stored once, as views of it), per-module versions (`state_dict()._metadata`, which
`_load_from_state_dict` migrations read), JSON extra states, the dtypes of non-persistent buffers, frozen
parameters and modules in eval mode.
`check_rebuildable` runs before a save writes anything, so a model that could not come back is refused
instead of getting an id; `mmlib.approaches.model_building.rebuild` builds it at recovery.
"""

import json
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Optional

import torch

from mmlib.approaches.model_building import CONSTRUCTION_ERRORS, assign_state, meta_construction, stored_and_views
from mmlib.approaches.model_building import rebuild  # noqa: F401 - benchmarks import it from here
from mmlib.errors import InvalidSaveInfoError
from mmlib.save_info import unwrap_compiled
from mmlib.schema.state_layout import StateLayout, TensorView
from mmlib.util.dtypes import dtype_name

EXTRA_STATE_SUFFIX = "_extra_state"


@dataclass
class CapturedState:
    """A model's state split for storage: `tensors` (detached tensors, on the CPU unless captured with
    `to_cpu=False`, one per sharing group, in state-dict order; views of another stored tensor left out), its
    `layout`, and `names`, every state-dict name in order."""

    tensors: dict[str, torch.Tensor]
    layout: StateLayout
    names: list[str]

    def named_values(self) -> dict[str, Any]:
        """name -> tensor (aliases give their group's tensor object, views view the stored tensor) or JSON extra
        state, in state-dict order."""
        tensors = stored_and_views(self.tensors, self.layout)
        values = {}
        for name in self.names:
            if name in self.layout.extra_states:
                values[name] = self.layout.extra_states[name]
            else:
                values[name] = tensors[self.layout.aliases.get(name, name)]
        return values


def _sharing_key(tensor: torch.Tensor) -> Optional[tuple]:
    """Equal for two tensors that view the same memory in the same way (None for empty tensors)."""
    if tensor.numel() == 0:
        return None
    return (tensor.device, tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape),
            tensor.stride(), tensor.dtype, tensor.is_conj(), tensor.is_neg())


def _view_within(name: str, root: torch.Tensor, tensor: torch.Tensor) -> Optional[TensorView]:
    """Where `tensor` lies in the memory of `root`, called `name` (contiguous, of the same storage and dtype), or
    None when it reaches outside it."""
    view = TensorView(name, int(tensor.storage_offset() - root.storage_offset()), tuple(tensor.shape), tensor.stride())
    return view if view.offset >= 0 and view.offset + view.span() <= root.numel() else None


def _find_views(tensors: dict[str, torch.Tensor]) -> dict[str, TensorView]:
    """Name -> where it lies in another of `tensors`, for each tensor inside the memory of a contiguous one.

    Tensors over one storage (with one dtype) are taken largest contiguous first (in state-dict order among
    equals): each inside one taken before views the first such one, and one inside none of them is a root
    when it is contiguous, else stored on its own. The order depends on the tensors alone, so a rebuilt model
    gives the same views again.
    """
    groups: dict[tuple, list[str]] = {}
    for name, tensor in tensors.items():
        if tensor.numel() and not tensor.is_conj() and not tensor.is_neg():
            groups.setdefault((tensor.device, tensor.untyped_storage().data_ptr(), tensor.dtype), []).append(name)
    views: dict[str, TensorView] = {}
    for names in groups.values():
        if len(names) < 2:
            continue
        contiguous = sorted((name for name in names if tensors[name].is_contiguous()),
                            key=lambda name: -tensors[name].numel())
        roots: list[str] = []
        for name in contiguous + [name for name in names if not tensors[name].is_contiguous()]:
            view = next(filter(None, (_view_within(root, tensors[root], tensors[name]) for root in roots)), None)
            if view is not None:
                views[name] = view
            elif tensors[name].is_contiguous():
                roots.append(name)
    return {name: views[name] for name in tensors if name in views}


def _check_storable(name: str, tensor: torch.Tensor) -> None:
    if tensor.is_quantized or tensor.layout != torch.strided or tensor.is_meta:
        kind = "quantized" if tensor.is_quantized else "on the meta device" if tensor.is_meta else str(tensor.layout)
        raise InvalidSaveInfoError(
            f"tensor {name!r} is {kind}, which mmlib cannot store exactly; dequantize it, make it dense "
            "(to_dense()) or load real weights into it before saving")


def _json_extra_state(name: str, value: Any) -> Any:
    """`value` if it survives a JSON round trip unchanged; raises InvalidSaveInfoError otherwise."""
    try:
        same = json.loads(json.dumps(value, allow_nan=False)) == value
    except (TypeError, ValueError):
        same = False
    if not same:
        raise InvalidSaveInfoError(
            f"the extra state {name!r} (from get_extra_state) is a {type(value).__name__} that does not survive a "
            "JSON round trip unchanged; return a tensor or plain JSON values (dicts with string keys, lists, "
            "numbers, strings) from get_extra_state, and nothing was saved")
    return value


def _non_persistent_buffers(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    for prefix, module in model.named_modules(remove_duplicate=False):
        for name in module._non_persistent_buffers_set:
            buffer = module._buffers.get(name)
            if buffer is not None:
                yield (f"{prefix}.{name}" if prefix else name), buffer


def capture(model: torch.nn.Module, *, to_cpu: bool = True) -> CapturedState:
    """Split the model's state into tensors to store and their layout; refuses what cannot be stored exactly.

    The tensors are copied to the CPU (what a save stores); `to_cpu=False` leaves them on their device, for a
    check that hashes them (`tensor_hash` copies one tensor at a time) without a CPU copy of the whole model.
    """
    model = unwrap_compiled(model)
    state = model.state_dict(keep_vars=True)
    layout = StateLayout(module_metadata={prefix: dict(entry)
                                          for prefix, entry in getattr(state, "_metadata", {}).items()})
    distinct: dict[str, torch.Tensor] = {}
    first_of: dict[Optional[tuple], str] = {}  # sharing key -> the first name holding that tensor
    for name, value in state.items():
        if not isinstance(value, torch.Tensor):
            if not name.endswith(EXTRA_STATE_SUFFIX):
                raise InvalidSaveInfoError(f"state-dict entry {name!r} is a {type(value).__name__}, not a tensor; "
                                           "only tensors and extra states can be saved")
            layout.extra_states[name] = _json_extra_state(name, value)
            continue
        _check_storable(name, value)
        key = _sharing_key(value)
        if key in first_of:
            layout.aliases[name] = first_of[key]
            if value is state[first_of[key]]:
                layout.tied.append(name)
            continue
        if key is not None:
            first_of[key] = name
        distinct[name] = value
    layout.views = _find_views(distinct)
    tensors = {name: value.detach().to("cpu") if to_cpu else value.detach() for name, value in distinct.items()
               if name not in layout.views}
    layout.buffer_dtypes = {name: dtype_name(buffer.dtype) for name, buffer in _non_persistent_buffers(model)}
    layout.frozen = [name for name, parameter in model.named_parameters(remove_duplicate=False)
                     if not parameter.requires_grad]
    layout.eval_modules = [name for name, module in model.named_modules(remove_duplicate=False) if not module.training]
    return CapturedState(tensors, layout, list(state))


def state_device(model: torch.nn.Module) -> Optional[str]:
    """The device the model's parameters and buffers lie on, as a save records it ("cuda:0"; several joined by
    commas); None when they lie on the CPU alone, or the model has none."""
    devices = sorted({str(tensor.device) for tensor in (*model.parameters(), *model.buffers())})
    return None if devices in ([], ["cpu"]) else ",".join(devices)


def move_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """`model` with its parameters and buffers on `device`, placed as a rebuild places them (tied tensors and views
    of one memory keep sharing it there, which `model.to` would not keep for buffers and views); `model`
    unchanged when they are there already."""
    if all(tensor.device == device for tensor in (*model.parameters(), *model.buffers())):
        return model
    captured = capture(model)
    return assign_state(model, captured.tensors, captured.layout, device)


def state_shapes(values: Mapping[str, Any]) -> dict[str, Optional[list[int]]]:
    """State-dict name -> tensor shape (None for an extra state that is not a tensor)."""
    return {name: list(value.shape) if isinstance(value, torch.Tensor) else None for name, value in values.items()}


def module_types(model: torch.nn.Module) -> dict[str, str]:
    """Module name -> class name of every submodule: the architecture, parameter-free layers included."""
    return {name: type(module).__qualname__ for name, module in model.named_modules(remove_duplicate=False)}


def check_rebuildable(factory: Callable[[], torch.nn.Module], captured: CapturedState,
                      saved_modules: dict[str, str], describe: str) -> None:
    """Raise InvalidSaveInfoError unless `factory` builds the saved architecture: the same modules
    (`saved_modules`, from `module_types`) and the captured state-dict names and shapes.

    `describe` names the factory call in the message (e.g. `ResNet18()`). Dtypes may differ: the stored
    tensors are assigned, so they keep theirs.
    """
    try:
        with meta_construction():
            built = factory()
    except CONSTRUCTION_ERRORS:
        built = None
    try:
        built = built if built is not None else factory()
    except Exception as error:  # noqa: BLE001 - any constructor failure means the model cannot be rebuilt
        raise InvalidSaveInfoError(f"{describe} raises {type(error).__name__}: {error}; save with init_args the "
                                   "constructor accepts, or with a class or factory that builds this model") \
            from error
    if not isinstance(built, torch.nn.Module):
        raise InvalidSaveInfoError(f"{describe} returns a {type(built).__name__}, not a torch.nn.Module; save with "
                                   "a class or a factory function that returns the model")
    hint = "save with a class or factory that builds this architecture, or pass init_args"
    built_modules = module_types(built)
    for name, class_name in saved_modules.items():
        if built_modules.get(name) != class_name:
            built_as = f"a {built_modules[name]}" if name in built_modules else "nothing"
            raise InvalidSaveInfoError(f"module {name!r} is a {class_name} in the model but {describe} builds "
                                       f"{built_as} there (was it replaced or added after construction?): {hint}")
    extra = [name for name in built_modules if name not in saved_modules]
    if extra:
        raise InvalidSaveInfoError(f"{describe} builds modules {extra[:5]}, which the model lacks: {hint}")
    expected = state_shapes(built.state_dict(keep_vars=True))
    saved = state_shapes(captured.named_values())
    for name, shape in saved.items():
        if name not in expected:
            raise InvalidSaveInfoError(f"the model has {name!r}, which {describe} does not build (was a layer added "
                                       f"or replaced after construction?): {hint}")
        if shape != expected[name]:
            raise InvalidSaveInfoError(f"{name!r} has shape {shape} but {describe} builds {expected[name]}: {hint}")
    missing = [name for name in expected if name not in saved]
    if missing:
        raise InvalidSaveInfoError(f"{describe} builds {missing[:5]}, which the model lacks: {hint}")
    if list(expected) != captured.names:
        raise InvalidSaveInfoError(f"{describe} registers the model's layers in another order than the saved model; "
                                   f"{hint}")

