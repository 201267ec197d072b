"""`ProbeSummary`: the per-layer records of one probed step, compared, printed, saved and loaded.

Saved summaries are ``{"format": "mmlib.probe_summary/2", "layers": {key: {ProbeInfo name: value}}}``, written with
``torch.save`` and read with ``weights_only=True``. They hold the recorded tensors themselves, not digests of them.
Files in format 1 numbered calls from 0 and hold leaf modules only; they load with their indices shifted by one,
so they compare equal to a ``leaf_only=True`` probe of the same step.
"""

import logging
import os
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import torch

from mmlib.errors import IntegrityError
from mmlib.probe import compare as _compare
from mmlib.probe.info import LayerInfo, ProbeInfo
from mmlib.util.atomic import atomic_write

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

_FORMAT = "mmlib.probe_summary/2"
_ZERO_BASED_FORMAT = "mmlib.probe_summary/1"


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
        return _compare.layers_equal(self.summary, other.summary)

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
        return _compare.first_divergence(self.summary, other.summary)

    def print_summary(self, info: Sequence[ProbeInfo]) -> None:
        """Print one row per layer with the requested fields (tensors as short content digests)."""
        _compare.print_layers(self.summary, info)

    def compare_to(self, other: "ProbeSummary", common: Sequence[ProbeInfo], compare: Sequence[ProbeInfo]) -> None:
        """Print one row per layer: the `common` fields' values, then 'same'/'diff' for each `compare` field.

        Layers are matched by forward index; 'same'/'diff' are coloured green/red when stdout is a terminal.
        """
        _compare.print_comparison(self.summary, other.summary, common, compare)

    def save(self, path: PathLike) -> None:
        """Write the summary to `path` atomically, loadable with ``torch.load(path, weights_only=True)``."""
        payload = {
            "format": _FORMAT,
            "layers": {key: {probe_field.name: value for probe_field, value in layer_info.items()}
                       for key, layer_info in self.summary.items()},
        }
        with atomic_write(os.fspath(path)) as out:
            torch.save(payload, out)
        logger.debug("saved probe summary with %d layers to %s", len(self.summary), path)

    def load(self, path: PathLike) -> None:
        """Replace this summary with the one saved at `path` (read without unpickling arbitrary objects).

        Raises IntegrityError when the file is damaged or was not written by `save`; OSError (FileNotFoundError,
        PermissionError) when it cannot be opened.
        """
        with open(path, "rb") as file:
            try:
                payload = torch.load(file, map_location="cpu", weights_only=True)
            except Exception as error:  # torch raises RuntimeError, OSError, EOFError, UnpicklingError, ... here
                first_sentence = (str(error).splitlines() or [""])[0].split(". ")[0]
                raise _unreadable(path, f"torch.load fails ({type(error).__name__}: {first_sentence})") from error
        file_format = payload.get("format") if isinstance(payload, dict) else None
        if file_format not in (_FORMAT, _ZERO_BASED_FORMAT):
            raise _unreadable(path, f"it is not a probe summary in format {_FORMAT} (its format: {file_format!r})")
        layers = payload.get("layers")
        if not isinstance(layers, dict) or not all(isinstance(fields, dict) for fields in layers.values()):
            raise _unreadable(path, "its 'layers' entry is not a dict of {field name: value} per layer")
        summary: Dict[str, LayerInfo] = {}
        for key, fields in layers.items():
            unknown = [name for name in fields if name not in ProbeInfo.__members__]
            if unknown:
                raise _unreadable(path, f"layer {key!r} has unknown field {unknown[0]!r}")
            summary[key] = {ProbeInfo[name]: value for name, value in fields.items()}
            if file_format == _ZERO_BASED_FORMAT:
                _count_from_one(summary[key])
        self.summary = summary


def _unreadable(path: PathLike, reason: str) -> IntegrityError:
    return IntegrityError(f"cannot load the probe summary {os.fspath(path)}: {reason}. The file is damaged or was "
                          "not written by ProbeSummary.save: save the summary again (probe the step again if no "
                          "intact copy exists)")


def _count_from_one(info: LayerInfo) -> None:
    """Shift the forward and backward index of a layer read from a format-1 file (which counted from 0)."""
    for index_field in (ProbeInfo.FORWARD_INDEX, ProbeInfo.BACKWARD_INDEX):
        if isinstance(info.get(index_field), int):
            info[index_field] += 1
