"""Matching the layers of two summaries, comparing them field by field, and printing them as tables.

Everything here works on the ``{layer key: LayerInfo}`` dicts that ``ProbeSummary.summary`` holds.
"""

import os
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from mmlib.equal import tensor_equal
from mmlib.probe.info import LayerInfo, ProbeInfo
from mmlib.util.hash import tensor_hash
from mmlib.util.table import GREEN, RED, format_table

Layers = Dict[str, LayerInfo]
# A layer key (of `layers1`, else of `layers2`) and that layer in each summary (None where it has none).
Pair = Tuple[str, Optional[LayerInfo], Optional[LayerInfo]]

# Order in which first_divergence inspects the fields: forward fields in forward order, then backward fields in
# backward order (a gradient divergence starts at the layer closest to the loss).
_FORWARD_FIELDS = (ProbeInfo.FORWARD_INDEX, ProbeInfo.LAYER_ID, ProbeInfo.LAYER_NAME, ProbeInfo.INPUT_SHAPE,
                   ProbeInfo.INPUT_TENSOR, ProbeInfo.OUTPUT_SHAPE, ProbeInfo.OUTPUT_TENSOR)
_BACKWARD_FIELDS = (ProbeInfo.BACKWARD_INDEX, ProbeInfo.GRAD_OUTPUT_SHAPE, ProbeInfo.GRAD_OUTPUT_TENSOR,
                    ProbeInfo.GRAD_INPUT_SHAPE, ProbeInfo.GRAD_INPUT_TENSOR)
_SAME_DIFF_COLOURS = {"same": GREEN, "diff": RED}
_DIGEST_LENGTH = 8  # hex digits of a tensor's digest shown in a table


def layers_equal(layers1: Layers, layers2: Layers) -> bool:
    """True when both summaries hold the same layer calls with equal fields."""
    return all(info1 is not None and info2 is not None and _layer_equal(info1, info2)
               for _, info1, info2 in pairs(layers1, layers2))


def first_divergence(layers1: Layers, layers2: Layers) -> Optional[Tuple[str, ProbeInfo]]:
    """The (layer key, field) where `layers1` first differs from `layers2`, or None when they are equal.

    Forward fields are checked layer by layer in forward order, then backward fields in backward order.
    """
    matched = pairs(layers1, layers2)
    for key, info1, info2 in matched:
        if info1 is None or info2 is None:
            return key, ProbeInfo.LAYER_ID
        for probe_field in _FORWARD_FIELDS:
            if not _field_equal(info1, info2, probe_field):
                return key, probe_field
    backward_order = sorted(matched, key=lambda pair: _sort_index(pair[1], ProbeInfo.BACKWARD_INDEX))
    for key, info1, info2 in backward_order:
        for probe_field in _BACKWARD_FIELDS:
            if not _field_equal(info1, info2, probe_field):
                return key, probe_field
    return None


def print_layers(layers: Layers, info: Sequence[ProbeInfo]) -> None:
    """Print one row per layer with the requested fields (tensors as short content digests)."""
    fields = _check_fields(info, "info")
    header = ["layer"] + [probe_field.value for probe_field in fields]
    rows = [[key] + [_format_value(layer_info.get(probe_field, "-")) for probe_field in fields]
            for key, layer_info in ordered(layers)]
    print(format_table(header, rows))


def print_comparison(layers1: Layers, layers2: Layers, common: Sequence[ProbeInfo],
                     compare: Sequence[ProbeInfo]) -> None:
    """Print one row per layer: the `common` fields' values, then 'same'/'diff' for each `compare` field.

    Layers are matched by forward index; 'same'/'diff' are coloured green/red when stdout is a terminal.
    """
    common_fields = _check_fields(common, "common")
    compare_fields = _check_fields(compare, "compare")
    header = (["layer"] + [probe_field.value for probe_field in common_fields]
              + [probe_field.value for probe_field in compare_fields])
    rows = []
    for key, info1, info2 in pairs(layers1, layers2):
        shown = layers1[key] if info1 is not None else layers2[key]
        row = [key]
        row += [_format_value(shown.get(probe_field, "-")) for probe_field in common_fields]
        row += ["same" if info1 is not None and info2 is not None and _field_equal(info1, info2, probe_field)
                else "diff" for probe_field in compare_fields]
        rows.append(row)
    print(format_table(header, rows, colours=_SAME_DIFF_COLOURS if _stdout_is_terminal() else None))


def ordered(layers: Layers) -> List[Tuple[str, LayerInfo]]:
    """Layers sorted by forward index (layers without one keep their insertion order, last)."""
    return sorted(layers.items(), key=lambda item: _sort_index(item[1], ProbeInfo.FORWARD_INDEX))


def pairs(layers1: Layers, layers2: Layers) -> List[Pair]:
    """Layers of both summaries matched by forward index (or by position when indices are missing)."""
    mine, theirs = ordered(layers1), ordered(layers2)
    if all(ProbeInfo.FORWARD_INDEX in info for _, info in mine + theirs):
        key_at1 = {info[ProbeInfo.FORWARD_INDEX]: key for key, info in mine}
        key_at2 = {info[ProbeInfo.FORWARD_INDEX]: key for key, info in theirs}
        return [(key_at1[index] if index in key_at1 else key_at2[index],
                 layers1[key_at1[index]] if index in key_at1 else None,
                 layers2[key_at2[index]] if index in key_at2 else None)
                for index in sorted(key_at1.keys() | key_at2.keys())]
    return [(mine[i][0] if i < len(mine) else theirs[i][0], mine[i][1] if i < len(mine) else None,
             theirs[i][1] if i < len(theirs) else None) for i in range(max(len(mine), len(theirs)))]


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
        return f"#{tensor_hash(value)[:_DIGEST_LENGTH]}"
    if isinstance(value, tuple) and any(isinstance(item, torch.Tensor) for item in value):
        return "(" + ", ".join(_format_value(item) for item in value) + ")"
    return str(value)


def _check_fields(fields: Sequence[ProbeInfo], name: str) -> List[ProbeInfo]:
    fields = list(fields)
    if not all(isinstance(probe_field, ProbeInfo) for probe_field in fields):
        raise TypeError(f"{name} must be a list of ProbeInfo members, got {fields!r}")
    return fields


def _stdout_is_terminal() -> bool:
    isatty = getattr(sys.stdout, "isatty", None)
    return bool(isatty and isatty()) and "NO_COLOR" not in os.environ
