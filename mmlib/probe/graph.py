"""The autograd nodes one layer call created that pass gradient to its inputs.

The probe hooks these nodes to collect the gradient each input receives through the call: the semantics of
``register_full_backward_hook``, which itself raises as soon as a module's input or output is modified in place.
"""

from typing import Any, Dict, List, Tuple

import torch

# Why the private ``Node._sequence_nr()``: autograd numbers every node it creates from a per-thread counter that
# only grows (the engine runs ready nodes with higher numbers first, and the profiler pairs forward and backward
# ops by it); PyTorch exposes the number only through this private method. The probe reads the counter when a
# layer call starts (`sequence_marker`, from a throwaway view node) and later walks back from the call's outputs
# only through nodes numbered above it: exactly the nodes this call created. That stops the walk at the call's
# inputs instead of wandering through the whole earlier graph. If torch renames or removes the method, every
# training probe fails with AttributeError; if the numbers stopped growing in creation order, gradients w.r.t.
# inputs would silently go missing or be counted through paths outside the call. tests/test_probe.py
# (test_autograd_sequence_numbers_grow_in_creation_order) checks both the method and the order.


def sequence_marker(marker_leaf: torch.Tensor) -> int:
    """The sequence number of a node created now: nodes created from here on are numbered above it.

    `marker_leaf` is a tensor that requires grad, so that a view of it gets an autograd node.
    """
    node = marker_leaf.view(()).grad_fn
    if node is None:
        raise ValueError("sequence_marker needs a tensor that requires grad (its views then get autograd nodes)")
    return node._sequence_nr()


def _created_after(node: Any, marker: int) -> bool:
    return node._sequence_nr() > marker


def edges_to_inputs(roots: List[Any], input_positions: Dict[Tuple[int, int], int],
                    marker: int) -> List[Tuple[Any, List[Tuple[int, int]]]]:
    """Autograd nodes created by one layer call that pass gradient to its inputs, with (edge index, input position).

    `roots` are the grad_fn nodes of the call's outputs, `input_positions` maps ``(id(node), output_nr)`` of each
    input's gradient edge to the input's position, and `marker` is `sequence_marker` taken as the call started.
    """
    result = []
    seen: Dict[int, Any] = {}
    stack = [node for node in roots if node is not None and _created_after(node, marker)]
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
            elif _created_after(next_node, marker):
                stack.append(next_node)
        if routes:
            result.append((node, routes))
    return result
