"""Recording one step: hooks on the recorded modules collect each layer call's inputs, outputs and gradients.

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
gradient each input receives through this module), but they are collected with tensor and autograd-node hooks
(see mmlib.probe.graph): PyTorch's full backward hooks raise an error as soon as a module's input or output is
modified in place, which ResNet and GoogLeNet do in every block.
"""

import logging
import warnings
import weakref
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn
from torch.autograd.graph import GradientEdge, get_gradient_edge

from mmlib.probe.graph import edges_to_inputs, sequence_marker
from mmlib.probe.info import LayerInfo, ProbeInfo, ProbeMode
from mmlib.probe.summary import ProbeSummary

logger = logging.getLogger(__name__)


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
            # autograd nodes created from here on belong to this call (see mmlib.probe.graph)
            call.sequence_marker = sequence_marker(self._marker_leaf)
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
        for node, routes in edges_to_inputs(roots, input_positions, call.sequence_marker):
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


def _shapes(tensors: Sequence[torch.Tensor]) -> List[List[int]]:
    return [list(tensor.shape) for tensor in tensors]
