"""Stream a state dict into safetensors bytes and read it back without copies or pickles.

Format: 8-byte little-endian header length, a JSON header (name -> dtype, shape,
data_offsets), padding to 8 bytes, then the raw tensor bytes. A tensor whose dtype safetensors
lacks (complex, float8 variants, bit types, ...) is stored as its raw bytes, U8 with one more
dimension of the element size, and its real dtype is recorded in `__metadata__` under
`mmlib.dtypes` (a JSON object name -> torch dtype name).
"""

import json
import struct
from dataclasses import dataclass
from typing import Mapping, Optional

import torch

from mmlib.errors import IntegrityError
from mmlib.util.buffers import BinarySink, Buffer
from mmlib.util.dtypes import dtype_from_name, dtype_name
from mmlib.util.hash import tensor_bytes

DTYPE_NAMES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL", torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2",
    torch.uint16: "U16", torch.uint32: "U32", torch.uint64: "U64",
}
DTYPES = {name: dtype for dtype, name in DTYPE_NAMES.items()}
RAW_DTYPES_KEY = "mmlib.dtypes"
_METADATA = "__metadata__"
_ALIGNMENT = 8


def write_state_dict(state_dict: Mapping[str, torch.Tensor], sink: BinarySink) -> None:
    """Write `state_dict` to `sink` in safetensors format, tensor by tensor (no full in-memory copy)."""
    header, offset, payloads, raw_dtypes = {}, 0, [], {}
    for name, tensor in state_dict.items():
        data = tensor_bytes(tensor)
        if tensor.dtype in DTYPE_NAMES:
            stored_dtype, shape = DTYPE_NAMES[tensor.dtype], list(tensor.shape)
        else:
            raw_dtypes[name] = dtype_name(tensor.dtype)
            stored_dtype, shape = "U8", [*tensor.shape, tensor.element_size()]
        header[name] = {"dtype": stored_dtype, "shape": shape, "data_offsets": [offset, offset + data.nbytes]}
        offset += data.nbytes
        payloads.append(data)
    if raw_dtypes:
        header[_METADATA] = {RAW_DTYPES_KEY: json.dumps(raw_dtypes, separators=(",", ":"))}
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % _ALIGNMENT)
    sink.write(struct.pack("<Q", len(encoded)))
    sink.write(encoded)
    for data in payloads:
        sink.write(data)


@dataclass(frozen=True)
class TensorSpan:
    """Where a tensor's bytes lie in a safetensors file (offsets from the file's start) and what they are."""

    dtype: torch.dtype
    shape: list
    begin: int
    end: int


HEADER_PREFIX_BYTES = 8


def header_bytes(prefix: Buffer) -> int:
    """How many bytes from the start of a safetensors file its header takes, from its first 8 bytes."""
    return HEADER_PREFIX_BYTES + struct.unpack_from("<Q", prefix, 0)[0]


def tensor_spans(header: Buffer) -> dict[str, TensorSpan]:
    """Every tensor of a safetensors file, in stored order, from its first `header_bytes` bytes; IntegrityError when
    they are not a safetensors header."""
    try:
        start = header_bytes(header)
        entries = json.loads(bytes(memoryview(header)[HEADER_PREFIX_BYTES:start]))
        raw_dtypes = json.loads((entries.pop(_METADATA, None) or {}).get(RAW_DTYPES_KEY, "{}"))
        return {name: _span(entry, start, raw_dtypes.get(name)) for name, entry in entries.items()}
    except (struct.error, ValueError, KeyError, TypeError, AttributeError) as error:
        raise IntegrityError(f"weights blob is not valid safetensors data: {error!r}") from error


def read_state_dict(buffer: memoryview) -> dict[str, torch.Tensor]:
    """Tensors viewing `buffer` (a writable memoryview of safetensors bytes), in stored order."""
    spans = tensor_spans(buffer)
    try:
        return {name: _tensor_at(buffer, span) for name, span in spans.items()}
    except (ValueError, RuntimeError) as error:
        raise IntegrityError(f"weights blob is not valid safetensors data: {error!r}") from error


def _span(entry: dict, start: int, raw_dtype: Optional[str]) -> TensorSpan:
    """The span a header entry describes; `raw_dtype` names the real dtype of raw bytes."""
    begin, end = entry["data_offsets"]
    shape, dtype = entry["shape"], DTYPES[entry["dtype"]]
    if raw_dtype is not None:
        dtype, shape = dtype_from_name(raw_dtype), shape[:-1]
    return TensorSpan(dtype, shape, start + begin, start + end)


def _tensor_at(buffer: memoryview, span: TensorSpan) -> torch.Tensor:
    """The tensor a span describes, viewing `buffer`."""
    if span.end == span.begin:
        return torch.empty(span.shape, dtype=span.dtype)
    flat = torch.frombuffer(buffer, dtype=torch.uint8, count=span.end - span.begin, offset=span.begin)
    return flat.view(span.dtype).reshape(span.shape)
