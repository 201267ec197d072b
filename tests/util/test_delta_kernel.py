"""The compiled delta kernel (mmlib/util/_delta_kernel.c): built where a C compiler is, byte for byte the format
the numpy code writes and reads, and refusing arguments that would take it outside its buffers."""

import shutil
from types import SimpleNamespace

import pytest
import torch

import mmlib.util.delta
from mmlib.util.delta import DeltaCodec
from test_delta import CODECS, DTYPES, _bits, _tensor_pair

KERNEL = mmlib.util.delta._kernel
needs_kernel = pytest.mark.skipif(KERNEL is None, reason="the kernel is not built here")


def test_the_kernel_is_built_where_a_compiler_is():
    if not (shutil.which("cc") or shutil.which("gcc")):
        pytest.skip("no C compiler here: the numpy code is the one that runs")
    assert KERNEL is not None, "setup.py builds mmlib.util._delta_kernel where a C compiler is available"


@needs_kernel
@pytest.mark.parametrize("name", [name for name in CODECS if "shuffle" in name or "planes" in name])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("size", [0, 1, 5, 4099], ids=str)
def test_kernel_and_numpy_write_and_read_the_same_bytes(name, dtype, size, monkeypatch):
    codec = DeltaCodec.from_name(name)
    base, new = _tensor_pair(dtype, (size,))
    by_kernel = bytes(codec.encode(new, base))
    with monkeypatch.context() as numpy_only:
        numpy_only.setattr(mmlib.util.delta, "_kernel", None)
        by_numpy = bytes(codec.encode(new, base))
        assert _bits(codec.decode(by_kernel, dtype, (size,), base)) == _bits(new)
    assert by_kernel == by_numpy
    assert _bits(codec.decode(by_numpy, dtype, (size,), base)) == _bits(new)


@needs_kernel
def test_the_kernel_refuses_arguments_that_would_overrun_its_buffers():
    new, base, out = bytes(16), bytes(16), bytearray(16)
    planes = [bytes(4)] * 4
    KERNEL.encode_planes(new, base, out, 4, 2, True)
    KERNEL.decode_planes(planes, base, out, 4, 2, True)
    bad_calls = {
        "element size 3": lambda: KERNEL.encode_planes(new, base, out, 3, 2, False),
        "unknown operation": lambda: KERNEL.encode_planes(new, base, out, 4, 5, False),
        "zig-zag with xor": lambda: KERNEL.encode_planes(new, base, out, 4, 1, True),
        "plain with a base": lambda: KERNEL.encode_planes(new, base, out, 4, 0, False),
        "sub without a base": lambda: KERNEL.encode_planes(new, None, out, 4, 2, False),
        "short base": lambda: KERNEL.encode_planes(new, bytes(12), out, 4, 2, False),
        "short output": lambda: KERNEL.encode_planes(new, base, bytearray(12), 4, 2, False),
        "partial element": lambda: KERNEL.encode_planes(bytes(6), bytes(6), bytearray(6), 4, 2, False),
        "read-only output": lambda: KERNEL.encode_planes(new, base, bytes(16), 4, 2, False),
        "three planes": lambda: KERNEL.decode_planes(planes[:3], base, out, 4, 2, False),
        "short plane": lambda: KERNEL.decode_planes(planes[:3] + [bytes(3)], base, out, 4, 2, False),
        "short base when decoding": lambda: KERNEL.decode_planes(planes, bytes(12), out, 4, 2, False),
        "planes not a sequence": lambda: KERNEL.decode_planes(7, base, out, 4, 2, False),
    }
    for what, call in bad_calls.items():
        with pytest.raises((ValueError, TypeError)):
            call()
            pytest.fail(f"{what}: accepted")


@needs_kernel
@pytest.mark.parametrize("name", ["sub-zigzag-shuffle-zstd1", "sub-zigzag-planes-zstd1", "xor-planes-zstd1"])
def test_shuffled_and_plane_codecs_run_the_kernel_for_every_element_size_it_handles(name, monkeypatch):
    calls = []

    def spy(function):
        def record(*args):
            calls.append((function.__name__, args[3]))
            return function(*args)
        return record

    monkeypatch.setattr(mmlib.util.delta, "_kernel", SimpleNamespace(encode_planes=spy(KERNEL.encode_planes),
                                                                     decode_planes=spy(KERNEL.decode_planes)))
    codec = DeltaCodec.from_name(name)
    for dtype in (torch.uint8, torch.bfloat16, torch.float32, torch.float64, torch.complex128):
        base, new = _tensor_pair(dtype, (33,))
        assert _bits(codec.decode(codec.encode(new, base), dtype, (33,), base)) == _bits(new)
    assert calls == [(kernel, size) for size in (1, 2, 4, 8) for kernel in ("encode_planes", "decode_planes")], \
        "16-byte elements (complex128) take the numpy code, the others the kernel"
