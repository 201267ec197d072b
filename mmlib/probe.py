"""Record what every layer sees and produces in one inference or training step, to find where two runs diverge.

A probe hooks the same modules as the original MMlib: every module except the model itself and ``nn.Sequential`` /
``nn.ModuleList`` containers, so a ResNet ``BasicBlock`` is recorded as well as its convolutions
(``leaf_only=True`` records only modules without children). Like the original, ``probe_inference`` switches the
model to eval mode and ``probe_training`` to train mode, and leaves it in that mode.

Each layer call gets a forward index when it finishes, counting from 1, as the original's forward hooks number it:
a block comes after the layers it runs. Backward indices count from 1 in the order the gradients w.r.t. the calls'
outputs arrive. The probe records a call's inputs, outputs and, in training, the gradients w.r.t. its inputs and
outputs. Recorded tensors are detached CPU copies taken when the layer runs (inputs before it runs), so later
in-place operations (``ReLU(inplace=True)``, ``out += identity``) do not change them.

Gradients follow the semantics of ``nn.Module.register_full_backward_hook`` (gradient w.r.t. each output, and the
gradient each input receives through this module), but they are collected with tensor and autograd-node hooks:
PyTorch's full backward hooks raise an error as soon as a module's input or output is modified in place, which
ResNet and GoogLeNet do in every block.

Saved summaries are ``{"format": "mmlib.probe_summary/2", "layers": {key: {ProbeInfo name: value}}}``. Files in
format 1 numbered calls from 0 and hold leaf modules only; they load with their indices shifted by one, so they
compare equal to a ``leaf_only=True`` probe of the same step.
"""

import hashlib
import logging
import os
import sys
import warnings
import weakref
from dataclasses import dataclass, field
from enum import Enum
from functools import partial
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn
from torch.autograd.graph import GradientEdge, get_gradient_edge

from mmlib.equal import tensor_equal

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

_FORMAT = "mmlib.probe_summary/2"
_ZERO_BASED_FORMAT = "mmlib.probe_summary/1"
_GREEN = "\033[32m"
_RED = "\033[31m"
_RESET = "\033[0m"


class ProbeInfo(Enum):
    """A piece of information the probe records per layer call."""

    LAYER_ID = "layer_id"
    FORWARD_INDEX = "forward_index"
    BACKWARD_INDEX = "backward_index"
    LAYER_NAME = "layer_name"
    INPUT_SHAPE = "input_shape"
    INPUT_TENSOR = "input_tensor"
    OUTPUT_SHAPE = "output_shape"
    OUTPUT_TENSOR = "output_tensor"
    GRAD_INPUT_SHAPE = "grad_input_shape"
    GRAD_INPUT_TENSOR = "grad_input_tensor"
    GRAD_OUTPUT_SHAPE = "grad_output_shape"
    GRAD_OUTPUT_TENSOR = "grad_output_tensor"


class ProbeMode(Enum):
    """Whether a probe runs a forward pass only or a full training step."""

    INFERENCE = "inference"
    TRAINING = "training"


# Order in which first_divergence inspects the fields: forward fields in forward order, then backward fields in
# backward order (a gradient divergence starts at the layer closest to the loss).
_FORWARD_FIELDS = (ProbeInfo.FORWARD_INDEX, ProbeInfo.LAYER_ID, ProbeInfo.LAYER_NAME, ProbeInfo.INPUT_SHAPE,
                   ProbeInfo.INPUT_TENSOR, ProbeInfo.OUTPUT_SHAPE, ProbeInfo.OUTPUT_TENSOR)
_BACKWARD_FIELDS = (ProbeInfo.BACKWARD_INDEX, ProbeInfo.GRAD_OUTPUT_SHAPE, ProbeInfo.GRAD_OUTPUT_TENSOR,
                    ProbeInfo.GRAD_INPUT_SHAPE, ProbeInfo.GRAD_INPUT_TENSOR)

LayerInfo = Dict[ProbeInfo, Any]
_Pair = Tuple[Optional[str], Optional[LayerInfo], Optional[str], Optional[LayerInfo]]


class ProbeSummary:
    """Per-layer records of one probed step: ``summary`` maps a layer key to ``{ProbeInfo: value}``."""

    def __init__(self, summary_path: Optional[PathLike] = None) -> None:
        self.summary: Dict[str, LayerInfo] = {}
        if summary_path is not None:
            self.load(summary_path)

    def __repr__(self) -> str:
        return f"ProbeSummary(layers={len(self.summary)})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ProbeSummary):
            return NotImplemented
        return all(info1 is not None and info2 is not None and _layer_equal(info1, info2)
                   for _, info1, _, info2 in self._pairs(other))

    def add_attribute(self, layer_key: str, attribute: ProbeInfo, value: Any) -> None:
        """Set one recorded field of a layer, creating the layer entry if needed."""
        if not isinstance(attribute, ProbeInfo):
            raise TypeError(f"attribute must be a ProbeInfo member, got {attribute!r}")
        self.summary.setdefault(layer_key, {})[attribute] = value

    def has_layer_key(self, key: str) -> bool:
        """True when a layer with this key was recorded."""
        return key in self.summary

    def first_divergence(self, other: "ProbeSummary") -> Optional[Tuple[str, ProbeInfo]]:
        """The (layer key, field) where this summary first differs from `other`, or None when they are equal.

        Forward fields are checked layer by layer in forward order, then backward fields in backward order.
        """
        pairs = self._pairs(other)
        for key1, info1, key2, info2 in pairs:
            if info1 is None or info2 is None:
                return (key1 if key1 is not None else key2), ProbeInfo.LAYER_ID
            for probe_field in _FORWARD_FIELDS:
                if not _field_equal(info1, info2, probe_field):
                    return key1, probe_field
        backward_order = sorted(pairs, key=lambda pair: _sort_index(pair[1], ProbeInfo.BACKWARD_INDEX))
        for key1, info1, _, info2 in backward_order:
            for probe_field in _BACKWARD_FIELDS:
                if not _field_equal(info1, info2, probe_field):
                    return key1, probe_field
        return None

    def print_summary(self, info: Sequence[ProbeInfo]) -> None:
        """Print one row per layer with the requested fields (tensors as short content digests)."""
        fields = _check_fields(info, "info")
        header = ["layer"] + [probe_field.value for probe_field in fields]
        rows = [[key] + [_format_value(layer_info.get(probe_field, "-")) for probe_field in fields]
                for key, layer_info in self._ordered()]
        _print_table(header, rows, colour=False)

    def compare_to(self, other: "ProbeSummary", common: Sequence[ProbeInfo], compare: Sequence[ProbeInfo]) -> None:
        """Print one row per layer: the `common` fields' values, then 'same'/'diff' for each `compare` field.

        Layers are matched by forward index; 'same'/'diff' are coloured green/red when stdout is a terminal.
        """
        common_fields = _check_fields(common, "common")
        compare_fields = _check_fields(compare, "compare")
        header = (["layer"] + [probe_field.value for probe_field in common_fields]
                  + [probe_field.value for probe_field in compare_fields])
        rows = []
        for key1, info1, key2, info2 in self._pairs(other):
            shown = info1 if info1 is not None else info2
            row = [key1 if key1 is not None else key2]
            row += [_format_value(shown.get(probe_field, "-")) for probe_field in common_fields]
            row += ["same" if info1 is not None and info2 is not None and _field_equal(info1, info2, probe_field)
                    else "diff" for probe_field in compare_fields]
            rows.append(row)
        _print_table(header, rows, colour=_stdout_is_terminal())

    def save(self, path: PathLike) -> None:
        """Write the summary to `path` atomically, loadable with ``torch.load(path, weights_only=True)``."""
        payload = {
            "format": _FORMAT,
            "layers": {key: {probe_field.name: value for probe_field, value in layer_info.items()}
                       for key, layer_info in self.summary.items()},
        }
        path = os.fspath(path)
        partial_path = f"{path}.partial"
        try:
            torch.save(payload, partial_path)
            os.replace(partial_path, path)
        finally:
            if os.path.exists(partial_path):
                os.remove(partial_path)
        logger.debug("saved probe summary with %d layers to %s", len(self.summary), path)

    def load(self, path: PathLike) -> None:
        """Replace this summary with the one saved at `path` (read without unpickling arbitrary objects)."""
        payload = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
        file_format = payload.get("format") if isinstance(payload, dict) else None
        if file_format not in (_FORMAT, _ZERO_BASED_FORMAT):
            raise ValueError(f"{path} is not a probe summary written by ProbeSummary.save ({_FORMAT})")
        summary: Dict[str, LayerInfo] = {}
        for key, fields in payload["layers"].items():
            try:
                summary[key] = {ProbeInfo[name]: value for name, value in fields.items()}
            except KeyError as err:
                raise ValueError(f"{path}: layer {key!r} has unknown field {err.args[0]!r}") from None
            if file_format == _ZERO_BASED_FORMAT:
                _count_from_one(summary[key])
        self.summary = summary

    def _ordered(self) -> List[Tuple[str, LayerInfo]]:
        """Layers sorted by forward index (layers without one keep their insertion order, last)."""
        return sorted(self.summary.items(), key=lambda item: _sort_index(item[1], ProbeInfo.FORWARD_INDEX))

    def _pairs(self, other: "ProbeSummary") -> List[_Pair]:
        """Layers of both summaries matched by forward index (or by position when indices are missing)."""
        mine, theirs = self._ordered(), other._ordered()
        if all(ProbeInfo.FORWARD_INDEX in info for _, info in mine + theirs):
            by_index1 = {info[ProbeInfo.FORWARD_INDEX]: (key, info) for key, info in mine}
            by_index2 = {info[ProbeInfo.FORWARD_INDEX]: (key, info) for key, info in theirs}
            indices = sorted(by_index1.keys() | by_index2.keys())
            matched = [(by_index1.get(index, (None, None)), by_index2.get(index, (None, None))) for index in indices]
        else:
            length = max(len(mine), len(theirs))
            matched = [(mine[i] if i < len(mine) else (None, None), theirs[i] if i < len(theirs) else (None, None))
                       for i in range(length)]
        return [(key1, info1, key2, info2) for (key1, info1), (key2, info2) in matched]


def probe_inference(model: nn.Module, inp: torch.Tensor, device: Optional[Union[str, torch.device]] = None,
                    forward_indices: Optional[Iterable[int]] = None, *, leaf_only: bool = False) -> ProbeSummary:
    """Switch the model to eval mode (it stays there, as in the original) and record one forward pass without autograd.

    `forward_indices` restricts recording to those layer calls (numbered from 1 as they finish); `leaf_only`
    records only modules without children. With `device` the model and input are moved there first.
    """
    selected = _selected_indices(forward_indices)
    if device is not None:
        model.to(device)
        inp = inp.to(device)
    model.eval()
    with _Probe(model, ProbeMode.INFERENCE, selected, leaf_only) as probe, torch.no_grad():
        model(inp)
    return probe.summary()


def probe_training(model: nn.Module, inp: torch.Tensor, optimizer: torch.optim.Optimizer,
                   loss_func: Callable[[Any, Any], torch.Tensor], target: Any,
                   device: Optional[Union[str, torch.device]] = None,
                   forward_indices: Optional[Iterable[int]] = None, *, leaf_only: bool = False) -> ProbeSummary:
    """Switch the model to train mode (it stays there, as in the original) and record one training step.

    The step is zero_grad, forward, loss, backward, optimizer step. `forward_indices` restricts recording to those
    layer calls (numbered from 1 as they finish); `leaf_only` records only modules without children. With `device`
    the model, input and target are moved there first.
    """
    selected = _selected_indices(forward_indices)
    if device is not None:
        model.to(device)
        inp = inp.to(device)
        if isinstance(target, torch.Tensor):
            target = target.to(device)
    model.train()
    optimizer.zero_grad()
    with _Probe(model, ProbeMode.TRAINING, selected, leaf_only) as probe:
        loss = loss_func(model(inp), target)
        loss.backward()
    optimizer.step()
    return probe.summary()


def _selected_indices(forward_indices: Optional[Iterable[int]]) -> Optional[frozenset]:
    """Validate `forward_indices`; without them, warn that every layer's tensors are kept."""
    if forward_indices is None:
        warnings.warn("probing records the inputs, outputs (and gradients) of every layer, so memory use may be "
                      "high; pass forward_indices to record only some layer calls", UserWarning, stacklevel=3)
        return None
    selected = frozenset(forward_indices)
    if not all(isinstance(index, int) for index in selected):
        raise TypeError(f"forward_indices must be integers, got {sorted(map(repr, selected))}")
    return selected


@dataclass(eq=False)
class _Call:
    """What the probe records about one call of one recorded module."""

    path: str
    call_index: int
    layer_name: str
    forward_index: Optional[int] = None  # set when the call finishes
    inputs: Tuple[torch.Tensor, ...] = ()
    outputs: Tuple[torch.Tensor, ...] = ()
    input_edges: List[Optional[GradientEdge]] = field(default_factory=list)
    sequence_marker: int = -1
    backward_index: Optional[int] = None
    grad_inputs: Dict[int, torch.Tensor] = field(default_factory=dict)
    grad_outputs: Dict[int, torch.Tensor] = field(default_factory=dict)


class _CpuCopies:
    """Detached CPU copies of tensors, made once per tensor object and version.

    A layer's input is usually the previous layer's output, unchanged; it then shares that copy instead of paying
    for a second clone. Copies are held weakly, so one that no record keeps (the inputs of a block whose forward
    index turned out not to be selected) is freed at once.
    """

    def __init__(self) -> None:
        self._copies: Dict[int, Tuple[weakref.ref, int, weakref.ref]] = {}

    def copy(self, tensor: torch.Tensor) -> torch.Tensor:
        """A detached CPU copy of `tensor` as it is now."""
        version = tensor._version
        known = self._copies.get(id(tensor))
        if known is not None and known[0]() is tensor and known[1] == version:
            copied = known[2]()
            if copied is not None:
                return copied
        detached = tensor.detach()
        copied = detached.clone() if detached.device.type == "cpu" else detached.to("cpu")
        self._copies[id(tensor)] = (weakref.ref(tensor), version, weakref.ref(copied))
        return copied


class _Probe:
    """Context manager that hooks the recorded modules and collects `_Call` records; removes all hooks on exit."""

    def __init__(self, model: nn.Module, mode: ProbeMode, selected: Optional[frozenset], leaf_only: bool) -> None:
        self._model = model
        self._mode = mode
        self._selected = selected
        self._last_selected = max(selected, default=0) if selected is not None else 0
        self._leaf_only = leaf_only
        self._calls: List[_Call] = []
        self._running: Dict[str, List[Optional[_Call]]] = {}
        self._call_counts: Dict[str, int] = {}
        self._handles: List[Any] = []
        self._copies = _CpuCopies()
        self._forward_count = 0
        self._backward_count = 0
        self._marker_leaf = torch.zeros((), requires_grad=True)

    def __enter__(self) -> "_Probe":
        try:
            for path, module in self._model.named_modules():
                if not self._records(module):
                    continue
                self._handles.append(module.register_forward_pre_hook(partial(self._before_forward, path),
                                                                      with_kwargs=True))
                self._handles.append(module.register_forward_hook(partial(self._after_forward, path)))
        except BaseException:
            self._remove_hooks()
            raise
        logger.debug("probing %d modules of %s (%s, leaf_only=%s)", len(self._handles) // 2,
                     type(self._model).__name__, self._mode.value, self._leaf_only)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._remove_hooks()

    def _remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _records(self, module: nn.Module) -> bool:
        """The original's rule: every module except the model and Sequential/ModuleList containers (or only leaves)."""
        if module is self._model:
            return False
        if self._leaf_only:
            return _is_leaf(module)
        return not isinstance(module, (nn.Sequential, nn.ModuleList))

    def summary(self) -> ProbeSummary:
        """The records as a ProbeSummary; modules called several times get a '#<call index>' key suffix."""
        result = ProbeSummary()
        for call in self._calls:
            key = call.path if self._call_counts[call.path] == 1 else f"{call.path}#{call.call_index}"
            layer: LayerInfo = {
                ProbeInfo.LAYER_ID: call.path,
                ProbeInfo.FORWARD_INDEX: call.forward_index,
                ProbeInfo.LAYER_NAME: call.layer_name,
                ProbeInfo.INPUT_SHAPE: _shapes(call.inputs),
                ProbeInfo.INPUT_TENSOR: call.inputs,
                ProbeInfo.OUTPUT_SHAPE: _shapes(call.outputs),
                ProbeInfo.OUTPUT_TENSOR: call.outputs,
            }
            if call.backward_index is not None:
                grad_inputs = tuple(call.grad_inputs[i] for i in sorted(call.grad_inputs))
                grad_outputs = tuple(call.grad_outputs[i] for i in sorted(call.grad_outputs))
                layer.update({
                    ProbeInfo.BACKWARD_INDEX: call.backward_index,
                    ProbeInfo.GRAD_INPUT_SHAPE: _shapes(grad_inputs),
                    ProbeInfo.GRAD_INPUT_TENSOR: grad_inputs,
                    ProbeInfo.GRAD_OUTPUT_SHAPE: _shapes(grad_outputs),
                    ProbeInfo.GRAD_OUTPUT_TENSOR: grad_outputs,
                })
            result.summary[key] = layer
        return result

    def _before_forward(self, path: str, module: nn.Module, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> None:
        call_index = self._call_counts.get(path, 0)
        self._call_counts[path] = call_index + 1
        if not self._may_be_selected(module):
            self._running.setdefault(path, []).append(None)
            return
        call = _Call(path, call_index, type(module).__name__)
        tensors = _tensors_in((args, kwargs))
        call.inputs = tuple(self._copies.copy(tensor) for tensor in tensors)
        if self._tracks_gradients():
            call.input_edges = [get_gradient_edge(tensor) if tensor.requires_grad else None for tensor in tensors]
            # autograd nodes are numbered in creation order: those created from here on belong to this call
            call.sequence_marker = self._marker_leaf.view(()).grad_fn._sequence_nr()
        self._running.setdefault(path, []).append(call)

    def _may_be_selected(self, module: nn.Module) -> bool:
        """Whether the call starting now can get a selected forward index (it gets its index when it finishes).

        A module without children finishes before any other call does, so its index is known now; a block finishes
        after the calls it runs, so it is captured while a selected index lies ahead and dropped if it misses them.
        """
        if self._selected is None:
            return True
        next_index = self._forward_count + 1
        if _is_leaf(module):
            return next_index in self._selected
        return next_index <= self._last_selected

    def _after_forward(self, path: str, module: nn.Module, args: Tuple[Any, ...], output: Any) -> None:
        self._forward_count += 1
        forward_index = self._forward_count
        call = self._running[path].pop()
        if self._selected is not None and forward_index not in self._selected:
            return
        if call is None:
            warnings.warn(f"layer call {forward_index} ({path}) is not recorded: its module has no children but ran "
                          "other recorded modules, so its forward index was not known when it started", UserWarning)
            return
        call.forward_index = forward_index
        tensors = _tensors_in(output)
        call.outputs = tuple(self._copies.copy(tensor) for tensor in tensors)
        if self._tracks_gradients():
            self._hook_gradients(call, tensors)
        self._calls.append(call)

    def _tracks_gradients(self) -> bool:
        return self._mode is ProbeMode.TRAINING and torch.is_grad_enabled()

    def _hook_gradients(self, call: _Call, outputs: List[torch.Tensor]) -> None:
        """Hook the gradients w.r.t. the call's outputs and those its inputs receive through this call."""
        input_positions = {(id(edge.node), edge.output_nr): position
                           for position, edge in enumerate(call.input_edges) if edge is not None}
        roots = []
        for position, tensor in enumerate(outputs):
            if not tensor.requires_grad:
                continue
            edge = get_gradient_edge(tensor)
            passed_through = input_positions.get((id(edge.node), edge.output_nr))
            self._handles.append(tensor.register_hook(partial(self._on_grad_output, call, position, passed_through)))
            roots.append(edge.node)
        for node, routes in _edges_to_inputs(roots, input_positions, call.sequence_marker):
            self._handles.append(node.register_hook(partial(self._on_node_grads, call, routes)))

    def _on_grad_output(self, call: _Call, position: int, passed_through: Optional[int], grad: torch.Tensor) -> None:
        if call.backward_index is None:
            self._backward_count += 1
            call.backward_index = self._backward_count
        call.grad_outputs[position] = self._copies.copy(grad)
        if passed_through is not None:
            self._add_grad_input(call, passed_through, grad)

    def _on_node_grads(self, call: _Call, routes: List[Tuple[int, int]],
                       grad_inputs: Tuple[Optional[torch.Tensor], ...],
                       grad_outputs: Tuple[Optional[torch.Tensor], ...]) -> None:
        for edge_index, position in routes:
            grad = grad_inputs[edge_index]
            if grad is not None:
                self._add_grad_input(call, position, grad)

    def _add_grad_input(self, call: _Call, position: int, grad: torch.Tensor) -> None:
        known = call.grad_inputs.get(position)
        if known is None:
            call.grad_inputs[position] = self._copies.copy(grad)
        else:
            call.grad_inputs[position] = known + grad.detach().to("cpu")


def _edges_to_inputs(roots: List[Any], input_positions: Dict[Tuple[int, int], int],
                     sequence_marker: int) -> List[Tuple[Any, List[Tuple[int, int]]]]:
    """Autograd nodes created by one layer call that pass gradient to its inputs, with (edge index, input position)."""
    result = []
    seen: Dict[int, Any] = {}
    stack = [node for node in roots if node is not None and node._sequence_nr() > sequence_marker]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen[id(node)] = node
        routes = []
        for edge_index, (next_node, output_nr) in enumerate(node.next_functions):
            if next_node is None:
                continue
            position = input_positions.get((id(next_node), output_nr))
            if position is not None:
                routes.append((edge_index, position))
            elif next_node._sequence_nr() > sequence_marker:
                stack.append(next_node)
        if routes:
            result.append((node, routes))
    return result


def _is_leaf(module: nn.Module) -> bool:
    return next(module.children(), None) is None


def _tensors_in(value: Any) -> List[torch.Tensor]:
    """The tensors in a (nested) tuple, list or dict, in order."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [tensor for item in value for tensor in _tensors_in(item)]
    if isinstance(value, dict):
        return [tensor for item in value.values() for tensor in _tensors_in(item)]
    return []


def _count_from_one(info: LayerInfo) -> None:
    """Shift the forward and backward index of a layer read from a format-1 file (which counted from 0)."""
    for index_field in (ProbeInfo.FORWARD_INDEX, ProbeInfo.BACKWARD_INDEX):
        if isinstance(info.get(index_field), int):
            info[index_field] += 1


def _shapes(tensors: Sequence[torch.Tensor]) -> List[List[int]]:
    return [list(tensor.shape) for tensor in tensors]


def _sort_index(info: Optional[LayerInfo], index_field: ProbeInfo) -> Tuple[int, int]:
    """Sort key: layers with an index first, by index; the others after, in their given order."""
    index = None if info is None else info.get(index_field)
    return (0, index) if isinstance(index, int) else (1, 0)


def _layer_equal(info1: LayerInfo, info2: LayerInfo) -> bool:
    return info1.keys() == info2.keys() and all(_field_equal(info1, info2, probe_field) for probe_field in info1)


def _field_equal(info1: Optional[LayerInfo], info2: Optional[LayerInfo], probe_field: ProbeInfo) -> bool:
    """True when both layers lack the field or hold equal values for it."""
    if info1 is None or info2 is None:
        return info1 is info2
    if (probe_field in info1) != (probe_field in info2):
        return False
    return probe_field not in info1 or _value_equal(info1[probe_field], info2[probe_field])


def _value_equal(value1: Any, value2: Any) -> bool:
    if isinstance(value1, torch.Tensor) or isinstance(value2, torch.Tensor):
        return (isinstance(value1, torch.Tensor) and isinstance(value2, torch.Tensor)
                and tensor_equal(value1, value2))
    if isinstance(value1, (tuple, list)) and isinstance(value2, (tuple, list)):
        return len(value1) == len(value2) and all(_value_equal(a, b) for a, b in zip(value1, value2))
    return value1 == value2


def _format_value(value: Any) -> str:
    """Printable form of a field value; tensors become a short digest of dtype, shape and bytes."""
    if isinstance(value, torch.Tensor):
        return _tensor_digest(value)
    if isinstance(value, tuple) and any(isinstance(item, torch.Tensor) for item in value):
        return "(" + ", ".join(_format_value(item) for item in value) + ")"
    return str(value)


def _tensor_digest(tensor: torch.Tensor) -> str:
    data = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy()
    digest = hashlib.blake2b(data, digest_size=4)
    digest.update(f"{tensor.dtype}{list(tensor.shape)}".encode())
    return f"#{digest.hexdigest()}"


def _check_fields(fields: Sequence[ProbeInfo], name: str) -> List[ProbeInfo]:
    fields = list(fields)
    if not all(isinstance(probe_field, ProbeInfo) for probe_field in fields):
        raise TypeError(f"{name} must be a list of ProbeInfo members, got {fields!r}")
    return fields


def _stdout_is_terminal() -> bool:
    isatty = getattr(sys.stdout, "isatty", None)
    return bool(isatty and isatty()) and "NO_COLOR" not in os.environ


def _print_table(header: List[str], rows: List[List[str]], colour: bool) -> None:
    """Print left-aligned columns; with `colour`, 'same'/'diff' cells are green/red."""
    widths = [max([len(header[column])] + [len(row[column]) for row in rows]) for column in range(len(header))]
    print("  ".join(title.ljust(width) for title, width in zip(header, widths)).rstrip())
    for row in rows:
        cells = []
        for cell, width in zip(row, widths):
            padded = cell.ljust(width)
            if colour and cell in ("same", "diff"):
                padded = f"{_GREEN if cell == 'same' else _RED}{cell}{_RESET}{padded[len(cell):]}"
            cells.append(padded)
        print("  ".join(cells).rstrip())
