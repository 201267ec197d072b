"""Stream a state dict into safetensors bytes and read it back without copies or pickles.

Format: 8-byte little-endian header length, a JSON header (name -> dtype, shape,
data_offsets), padding to 8 bytes, then the raw tensor bytes.
"""

import json
import struct
from typing import BinaryIO, Mapping

import torch

from mmlib.errors import IntegrityError
from mmlib.util.hash import tensor_bytes

DTYPE_NAMES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL", torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2",
    torch.complex64: "C64", torch.uint16: "U16", torch.uint32: "U32", torch.uint64: "U64",
}
DTYPES = {name: dtype for dtype, name in DTYPE_NAMES.items()}
_ALIGNMENT = 8


def write_state_dict(state_dict: Mapping[str, torch.Tensor], sink: BinaryIO) -> None:
    """Write `state_dict` to `sink` in safetensors format, tensor by tensor (no full in-memory copy)."""
    header, offset, payloads = {}, 0, []
    for name, tensor in state_dict.items():
        data = tensor_bytes(tensor)
        header[name] = {"dtype": DTYPE_NAMES[tensor.dtype], "shape": list(tensor.shape),
                        "data_offsets": [offset, offset + data.nbytes]}
        offset += data.nbytes
        payloads.append(data)
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % _ALIGNMENT)
    sink.write(struct.pack("<Q", len(encoded)))
    sink.write(encoded)
    for data in payloads:
        sink.write(data)


def read_state_dict(buffer: memoryview) -> dict[str, torch.Tensor]:
    """Tensors viewing `buffer` (a writable memoryview of safetensors bytes), in stored order."""
    try:
        (header_length,) = struct.unpack_from("<Q", buffer, 0)
        header = json.loads(bytes(buffer[8:8 + header_length]))
    except (struct.error, ValueError) as error:
        raise IntegrityError(f"weights blob is not valid safetensors data: {error}") from error
    start = 8 + header_length
    state_dict = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        dtype = DTYPES[entry["dtype"]]
        begin, end = entry["data_offsets"]
        if end == begin:
            state_dict[name] = torch.empty(entry["shape"], dtype=dtype)
            continue
        flat = torch.frombuffer(buffer, dtype=torch.uint8, count=end - begin, offset=start + begin)
        state_dict[name] = flat.view(dtype).reshape(entry["shape"])
    return state_dict
