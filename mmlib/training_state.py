"""What a resume needs besides the model, as tensors and JSON: optimizer and scheduler state, RNG states, the user's
own values. Nothing is pickled.

The state dicts are split into their tensors, stored like weights (as the buffers of a `TrainingStateModule`, so a
checkpoint's training state is a model of the store: hashed, deduplicated, delta-encoded against the previous
checkpoint's, checked on recovery), and a JSON tree that holds everything else with the tensors' places. The
tree's digest is a buffer of the module too, so a checked recovery covers the JSON as well.
"""

import json
import random
from typing import Any, Callable, Optional, cast

import numpy
import torch

from mmlib.errors import IntegrityError, InvalidArgumentError
from mmlib.util.dtypes import dtype_from_name, dtype_name
from mmlib.util.hash import new_hasher

TREE_DIGEST = "tree_digest"
_TENSOR, _TUPLE, _DICT = "$tensor", "$tuple", "$dict"


class TrainingStateModule(torch.nn.Module):
    """The tensors of a training state as buffers `t0`, `t1`, ... (`layout`: [dtype name, shape] of each), and the
    digest of the JSON tree that places them."""

    def __init__(self, layout: list):
        super().__init__()
        self.layout = layout
        for index, (dtype, shape) in enumerate(layout):
            self.register_buffer(f"t{index}", torch.empty(shape, dtype=dtype_from_name(dtype)))
        self.register_buffer(TREE_DIGEST, torch.zeros(32, dtype=torch.uint8))

    def tensors(self) -> list[torch.Tensor]:
        """The stored tensors, in the order the tree numbers them."""
        buffers = dict(self.named_buffers())
        return [buffers[f"t{index}"] for index in range(len(buffers) - 1)]


def cpu_copy(tensor: torch.Tensor) -> torch.Tensor:
    """A copy of `tensor` in CPU memory (pinned where it is on a GPU, so the copy does not wait for the transfer)."""
    if tensor.device.type == "cpu":
        return tensor.clone()
    copied = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
    copied.copy_(tensor, non_blocking=True)
    return copied


def copies_done() -> Callable[[], None]:
    """A function that waits until the GPU-to-CPU copies started so far are done (for another thread to call)."""
    if not torch.cuda.is_initialized():
        return lambda: None
    event = torch.cuda.Event()
    event.record()
    return event.synchronize


def _encoded(value: Any, tensors: list[torch.Tensor], path: str) -> Any:
    """`value` as JSON, tensors replaced by their index in `tensors` (appended), tuples and dicts with keys that
    are not strings tagged so they come back as they were."""
    if isinstance(value, torch.Tensor):
        tensors.append(value.detach())
        return {_TENSOR: len(tensors) - 1}
    if isinstance(value, numpy.ndarray):
        return _encoded(torch.from_numpy(value.copy()), tensors, path)
    if value is None or type(value) in (bool, int, float, str):
        return value
    if isinstance(value, (float, int)) and not isinstance(value, bool):  # numpy scalars and other number types
        return float(value) if isinstance(value, float) else int(value)
    if type(value) is list:
        return [_encoded(item, tensors, f"{path}[{index}]") for index, item in enumerate(value)]
    if type(value) is tuple:
        return {_TUPLE: [_encoded(item, tensors, f"{path}[{index}]") for index, item in enumerate(value)]}
    if type(value) is dict:
        return {_DICT: [[_encoded(key, tensors, f"{path} key"), _encoded(item, tensors, f"{path}[{key!r}]")]
                        for key, item in value.items()]}
    raise InvalidArgumentError(f"{path} is a {type(value).__name__}, which a checkpoint cannot store without pickling "
                               "it: keep tensors, numbers, strings, None and lists, tuples and dicts of them in state "
                               "dicts and in extra")


def _decoded(value: Any, tensors: list[torch.Tensor]) -> Any:
    """The value `_encoded` made JSON of, with its tensors."""
    if isinstance(value, list):
        return [_decoded(item, tensors) for item in value]
    if not isinstance(value, dict):
        return value
    if _TENSOR in value:
        return tensors[value[_TENSOR]]
    if _TUPLE in value:
        return tuple(_decoded(item, tensors) for item in value[_TUPLE])
    return {_decoded(key, tensors): _decoded(item, tensors) for key, item in value[_DICT]}


def _tree_digest(tree: Any) -> torch.Tensor:
    canonical = json.dumps(tree, sort_keys=True, separators=(",", ":")).encode()
    return torch.frombuffer(bytearray(new_hasher().update(canonical).digest()), dtype=torch.uint8)


def rng_states() -> dict:
    """The states of torch's CPU (and, once used, CUDA) generators, numpy's global one and Python's `random`."""
    name, keys, position, has_gauss, gauss = cast(tuple, numpy.random.get_state(legacy=True))
    version, internal, gauss_next = random.getstate()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
            "numpy": [name, torch.from_numpy(keys.astype(numpy.int64)), position, has_gauss, gauss],
            "python": [version, torch.tensor(internal, dtype=torch.int64), gauss_next]}


def set_rng_states(states: dict) -> None:
    """Restore what `rng_states` returned (CUDA states only where as many devices are present)."""
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available() and torch.cuda.device_count() == len(states["cuda"]):
        torch.cuda.set_rng_state_all(states["cuda"])
    name, keys, position, has_gauss, gauss = states["numpy"]
    numpy.random.set_state((name, keys.numpy().astype(numpy.uint32), position, has_gauss, gauss))
    version, internal, gauss_next = states["python"]
    random.setstate((version, tuple(int(value) for value in internal.tolist()), gauss_next))


def state_of(stateful: Any) -> Any:
    """The state dict of an object with `state_dict()`, or the list of those of a list of them (None: None)."""
    if stateful is None:
        return None
    if isinstance(stateful, (list, tuple)):
        return [state_of(item) for item in stateful]
    if not callable(getattr(stateful, "state_dict", None)):
        raise InvalidArgumentError(f"{type(stateful).__name__} has no state_dict(): pass an optimizer, a scheduler or "
                                   "another object with state_dict() and load_state_dict()")
    return stateful.state_dict()


def load_state_of(stateful: Any, state: Any, what: str) -> None:
    """Load `state` (as `state_of` gave it) into `stateful`."""
    if stateful is None:
        return
    if state is None:
        raise InvalidArgumentError(f"the checkpoint holds no {what} state: resume without {what}=...")
    if isinstance(stateful, (list, tuple)):
        if not isinstance(state, list) or len(state) != len(stateful):
            saved = len(state) if isinstance(state, list) else 1
            raise InvalidArgumentError(f"the checkpoint holds the state of {saved} {what}(s), {len(stateful)} were "
                                       "given")
        for item, item_state in zip(stateful, state):
            load_state_of(item, item_state, what)
        return
    stateful.load_state_dict(state)


def pack(state: dict, copy: bool = False) -> tuple[TrainingStateModule, Any]:
    """A module holding the tensors of `state` (a dict of state dicts, RNG states and JSON values; with `copy`,
    copies of them in CPU memory), and the JSON tree that places them."""
    tensors: list[torch.Tensor] = []
    tree = _encoded(state, tensors, "the training state")
    if copy:
        tensors = [cpu_copy(tensor) for tensor in tensors]
    module = TrainingStateModule([])  # then given the tensors themselves, not allocated for them
    module.layout = [[dtype_name(tensor.dtype), list(tensor.shape)] for tensor in tensors]
    module._buffers = {f"t{index}": tensor for index, tensor in enumerate(tensors)}
    module.register_buffer(TREE_DIGEST, _tree_digest(tree))
    return module, tree


def unpack(module: torch.nn.Module, tree: Any, state_id: Optional[str] = None) -> dict:
    """The state `pack` was given, from the recovered module and the stored tree; IntegrityError when the tree is
    not the one whose digest the module holds."""
    if not isinstance(module, TrainingStateModule) or not torch.equal(module.get_buffer(TREE_DIGEST),
                                                                       _tree_digest(tree)):
        raise IntegrityError(f"the training state {state_id} does not match its stored description (the checkpoint's "
                             "record was changed); run `mmlib verify`")
    return _decoded(tree, module.tensors())
