"""Lossless tensor codecs: a tensor stored as a compressed delta against its base tensor, bit-exact both ways.

A codec is named `<op>[-zigzag][-shuffle][-zstd<level>]`:

- op `plain`: the tensor's own bit patterns (needs no base; keyframes use it);
  `xor`: XOR of the new and the base bit patterns;
  `sub`: the difference of the bit patterns as unsigned integers (modulo 2**bits).
- `zigzag` (only with `sub`): map a difference d to 2|d| or 2|d|-1, so a small step down becomes a small number
  instead of 0xFFFF...; the high bytes of small differences are then zero whatever the sign.
- `shuffle`: store byte 0 of every element, then byte 1, ... After a small training step neighbouring floats
  keep their sign, exponent and high mantissa bits, so the high byte planes of a delta are long runs of zeros.
- `zstd<level>`: compress the result with Zstandard at that level.

Floats are never subtracted as floats: every operation works on the raw bit patterns, so decoding
reproduces NaNs, signed zeros and denormals exactly. The default, `sub-zigzag-shuffle-zstd1`, stored
fine-tuned ResNets smallest of the codecs `benchmarks/update_storage.py` compares, within 1% of higher
zstd levels that take two to four times as long to save.
"""

import re
from typing import Optional, Sequence, Union

import numpy as np
import torch
import zstandard

from mmlib.errors import IncompatibleModelError, IntegrityError, MMLibError
from mmlib.util.hash import tensor_bytes

PLAIN = "plain"
XOR = "xor"
SUB = "sub"
DEFAULT_CODEC = "sub-zigzag-shuffle-zstd1"

_NAME = re.compile(r"(?P<op>plain|xor|sub)(?P<zigzag>-zigzag)?(?P<shuffle>-shuffle)?(?:-zstd(?P<level>\d{1,2}))?")
_UNSIGNED = {1: np.dtype("<u1"), 2: np.dtype("<u2"), 4: np.dtype("<u4"), 8: np.dtype("<u8")}
_SIGNED = {1: np.dtype("<i1"), 2: np.dtype("<i2"), 4: np.dtype("<i4"), 8: np.dtype("<i8")}

Buffer = Union[bytes, bytearray, memoryview]


class UnknownCodecError(MMLibError, ValueError):
    """A codec name that does not follow `<op>[-zigzag][-shuffle][-zstd<level>]`."""


def _bits(tensor: torch.Tensor) -> np.ndarray:
    """The tensor's bit patterns as a flat array of unsigned integers of its element size (no copy if contiguous)."""
    raw = np.frombuffer(tensor_bytes(tensor), dtype=np.uint8)
    size = tensor.element_size()
    return raw.view(_UNSIGNED[size]) if size in _UNSIGNED else raw


class DeltaCodec:
    """Encodes a tensor (against a base tensor of the same dtype and shape) into bytes, and back."""

    def __init__(self, op: str = PLAIN, *, zigzag: bool = False, shuffle: bool = False,
                 level: Optional[int] = None):
        if op not in (PLAIN, XOR, SUB) or (zigzag and op != SUB) or (level is not None and not 1 <= level <= 22):
            raise UnknownCodecError(
                f"no codec with op={op!r}, zigzag={zigzag}, level={level}; ops are plain, xor and sub, zigzag "
                f"goes only with sub, and zstd levels run from 1 to 22 (the default codec is {DEFAULT_CODEC!r})")
        self.op, self.zigzag, self.shuffle, self.level = op, zigzag, shuffle, level

    @classmethod
    def from_name(cls, name: str) -> "DeltaCodec":
        """The codec a name such as `xor-shuffle-zstd3` describes."""
        match = _NAME.fullmatch(name) if isinstance(name, str) else None
        if match is None:
            raise UnknownCodecError(
                f"unknown codec {name!r}; name one as <op>[-zigzag][-shuffle][-zstd<level>] with op plain, xor or "
                f"sub, e.g. {DEFAULT_CODEC!r}")
        level = match["level"]
        return cls(match["op"], zigzag=bool(match["zigzag"]), shuffle=bool(match["shuffle"]),
                   level=int(level) if level else None)

    @property
    def name(self) -> str:
        parts = [self.op] + ["zigzag"] * self.zigzag + ["shuffle"] * self.shuffle
        parts += [f"zstd{self.level}"] if self.level is not None else []
        return "-".join(parts)

    @property
    def needs_base(self) -> bool:
        """True when encoding and decoding need the base tensor."""
        return self.op != PLAIN

    def __repr__(self) -> str:
        return f"DeltaCodec({self.name!r})"

    def encode(self, tensor: torch.Tensor, base: Optional[torch.Tensor] = None) -> Buffer:
        """The bytes that, with `base`, give back `tensor` exactly."""
        bits = _bits(tensor)
        if self.needs_base:
            if base is None or base.dtype != tensor.dtype or base.shape != tensor.shape:
                raise IncompatibleModelError(
                    f"a {self.name} delta needs a base tensor of dtype {tensor.dtype} and shape "
                    f"{tuple(tensor.shape)}, got {None if base is None else (base.dtype, tuple(base.shape))}; "
                    "store the tensor with the plain codec instead")
            bits = self._forward(bits, _bits(base))
        raw = bits.view(np.uint8)
        size = tensor.element_size()
        if self.shuffle and size > 1:
            raw = _transpose_bytes(raw, raw.size // size, size)
        if self.level is None:
            return memoryview(raw)
        return zstandard.ZstdCompressor(level=self.level).compress(raw)

    def decode(self, data: Buffer, dtype: torch.dtype, shape: Sequence[int],
               base: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The tensor that `encode` turned into `data`; raises IntegrityError when `data` cannot be it."""
        return decode_chain(base, [(self, data)], dtype, shape)

    def _forward(self, new: np.ndarray, base: np.ndarray) -> np.ndarray:
        if self.op == XOR:
            return np.bitwise_xor(new, base)
        delta = np.subtract(new, base)
        if self.zigzag:
            sign = delta.view(_SIGNED[delta.dtype.itemsize]) >> (8 * delta.dtype.itemsize - 1)
            np.left_shift(delta, 1, out=delta)
            np.bitwise_xor(delta, sign.view(delta.dtype), out=delta)
        return delta

    def _apply(self, data: Buffer, bits: Optional[np.ndarray], size: int, nbytes: int) -> np.ndarray:
        """The bit patterns this step encodes, computed in place in `bits` (the base's, owned by the caller)."""
        if self.level is not None:
            try:
                data = zstandard.ZstdDecompressor().decompress(data, max_output_size=nbytes)
            except zstandard.ZstdError as error:
                raise IntegrityError(f"a {self.name} tensor payload does not decompress: {error}") from error
        raw = np.frombuffer(data, dtype=np.uint8)
        if raw.size != nbytes:
            raise IntegrityError(f"a {self.name} tensor payload holds {raw.size} bytes where {nbytes} are needed; "
                                 "the update is damaged")
        owned = self.shuffle and size > 1
        if owned:
            raw = _transpose_bytes(raw, size, raw.size // size)
        delta = raw.view(_UNSIGNED[size]) if size in _UNSIGNED else raw
        if not self.needs_base:
            return delta if owned else delta.copy()
        if bits is None:
            raise IntegrityError(f"a {self.name} delta was stored without a base tensor; the update metadata is "
                                 "inconsistent")
        if self.op == XOR:
            return np.bitwise_xor(bits, delta, out=bits)
        if self.zigzag:
            sign = np.bitwise_and(delta, 1)
            np.negative(sign.view(_SIGNED[delta.dtype.itemsize]), out=sign.view(_SIGNED[delta.dtype.itemsize]))
            np.bitwise_xor(np.right_shift(delta, 1, out=delta if owned else None), sign, out=sign)
            delta = sign
        return np.add(bits, delta, out=bits)


def _transpose_bytes(raw: np.ndarray, rows: int, columns: int) -> np.ndarray:
    """Transpose a flat rows x columns byte matrix, looping over its short side (an element's bytes)."""
    matrix = raw.reshape(rows, columns)
    out = np.empty((columns, rows), dtype=np.uint8)
    if columns <= rows:
        for column in range(columns):
            out[column] = matrix[:, column]
    else:
        for row in range(rows):
            out[:, row] = matrix[row]
    return out.reshape(-1)


def decode_chain(start: Optional[torch.Tensor], steps: Sequence[tuple[DeltaCodec, Buffer]], dtype: torch.dtype,
                 shape: Sequence[int]) -> torch.Tensor:
    """Apply encoded steps, oldest first, to a copy of `start` (None when the first step stores a full copy).

    The result is computed in one buffer, so a chain of k deltas costs k decompressions and k in-place
    passes, not k intermediate tensors. Raises IntegrityError when the steps cannot produce such a tensor.
    """
    shape = tuple(shape)
    size = dtype.itemsize
    nbytes = size * int(np.prod(shape, dtype=np.int64))
    if start is not None and (start.dtype != dtype or tuple(start.shape) != shape):
        raise IntegrityError(f"a delta of a {dtype} tensor of shape {shape} was stored against a base tensor of "
                             f"another dtype or shape ({start.dtype}, {tuple(start.shape)}); the update metadata is "
                             "inconsistent")
    bits = None if start is None else _bits(start).copy()
    for codec, data in steps:
        bits = codec._apply(data, bits, size, nbytes)
    if bits is None:
        raise IntegrityError("a tensor was stored with neither a full copy nor a base; the update metadata is "
                             "inconsistent")
    return torch.from_numpy(bits.view(np.uint8)).view(dtype).reshape(shape)
