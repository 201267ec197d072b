"""Delta codecs: every codec round-trips every dtype bit-exactly, and deltas of small changes are small.

Every test runs twice: with the compiled one-pass kernel and with the numpy code that stands in where it is not
built; the two must also write the same bytes.
"""

import concurrent.futures
import re
import struct
import warnings

import numpy as np
import pytest
import torch

import mmlib.util.delta
from mmlib.errors import IncompatibleModelError, IntegrityError
from mmlib.util.delta import DEFAULT_CODEC, DeltaCodec, UnknownCodecError, decode_chain

PLANES_CODECS = ["plain-planes-zstd1", "plain-planes-zstd3", "xor-planes-zstd1", "sub-planes-zstd1", "sub-zigzag-planes-zstd1"]
CODECS = ["plain", "plain-shuffle-zstd3", "xor", "xor-shuffle-zstd1", "xor-zstd3", "sub", "sub-shuffle-zstd1",
          "sub-zigzag", "sub-zigzag-shuffle-zstd1", "sub-zigzag-zstd9"] + PLANES_CODECS
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.int8,
          torch.uint8, torch.bool, torch.complex64]


KERNEL = mmlib.util.delta._kernel


@pytest.fixture(params=["kernel", "numpy"], autouse=True)
def delta_path(request, monkeypatch):
    """Run the test with the compiled kernel, then with the numpy code (the kernel switched off)."""
    if request.param == "kernel" and KERNEL is None:
        pytest.skip("the compiled delta kernel is not built here (tests/util/test_delta_kernel.py says why)")
    if request.param == "numpy":
        monkeypatch.setattr(mmlib.util.delta, "_kernel", None)
    return request.param


def _bits(tensor: torch.Tensor) -> bytes:
    return tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def _tensor_pair(dtype: torch.dtype, shape: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    """A base tensor and a slightly changed copy, with NaN, signed zero, inf and denormals among floats."""
    generator = torch.Generator().manual_seed(0)
    if dtype == torch.bool:
        base = torch.rand(shape, generator=generator) > 0.5
        return base, base ^ (torch.rand(shape, generator=generator) > 0.9)
    if dtype.is_floating_point or dtype.is_complex:
        base = torch.randn(shape, generator=generator, dtype=dtype)
        new = base + torch.randn(shape, generator=generator, dtype=dtype) * 1e-3
        if new.numel() >= 4:
            flat = new.view(-1)
            flat[:4] = torch.tensor([float("nan"), -0.0, float("inf"), 1e-40]).to(dtype)
        return base, new
    base = torch.randint(0, 100, shape, generator=generator, dtype=dtype)
    return base, base + torch.randint(-2, 3, shape, generator=generator).to(dtype)


@pytest.mark.parametrize("name", CODECS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(), (0,), (7,), (3, 4, 5)], ids=str)
def test_round_trip_is_bit_exact(name, dtype, shape):
    codec = DeltaCodec.from_name(name)
    base, new = _tensor_pair(dtype, shape)
    decoded = codec.decode(codec.encode(new, base), dtype, shape, base)
    assert decoded.dtype == dtype and tuple(decoded.shape) == shape
    assert _bits(decoded) == _bits(new)
    expected = _bits(new)
    decoded.logical_not_() if dtype == torch.bool else decoded.add_(1)
    assert _bits(new) == expected, "the decoded tensor must own its memory"


@pytest.mark.parametrize("name", CODECS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_decoding_reads_the_base_and_never_writes_or_shares_it(name, dtype):
    codec = DeltaCodec.from_name(name)
    base, new = _tensor_pair(dtype, (1001,))
    base_bits = _bits(base)
    decoded = codec.decode(codec.encode(new, base), dtype, (1001,), base)
    assert _bits(base) == base_bits
    decoded.add_(1)
    assert _bits(base) == base_bits


def test_a_chain_without_steps_returns_a_copy_of_its_start():
    start = torch.randn(33)
    decoded = decode_chain(start, [], torch.float32, (33,))
    decoded.add_(1)
    assert not torch.equal(decoded, start)


@pytest.mark.parametrize("name", CODECS)
def test_non_contiguous_tensors_round_trip(name):
    codec = DeltaCodec.from_name(name)
    base, new = torch.randn(8, 6).t(), torch.randn(8, 6).t()
    assert _bits(codec.decode(codec.encode(new, base), new.dtype, new.shape, base)) == _bits(new)


def test_a_chain_of_deltas_decodes_to_its_last_version():
    versions = [torch.randn(1000)]
    for _ in range(5):
        versions.append(versions[-1] + torch.randn(1000) * 1e-4)
    steps = [(DeltaCodec(), DeltaCodec().encode(versions[0]))]
    for codec_name, (old, new) in zip(["xor-shuffle-zstd1", DEFAULT_CODEC] * 3, zip(versions, versions[1:])):
        codec = DeltaCodec.from_name(codec_name)
        steps.append((codec, codec.encode(new, old)))
    assert _bits(decode_chain(None, steps, torch.float32, (1000,))) == _bits(versions[-1])
    assert _bits(decode_chain(versions[0], steps[1:], torch.float32, (1000,))) == _bits(versions[-1])


@pytest.mark.parametrize("name", ["xor-shuffle-zstd1", "sub-zigzag-shuffle-zstd1", "xor-zstd3"])
def test_delta_of_a_small_change_is_smaller_than_the_plain_tensor(name):
    base = torch.randn(100_000)
    new = base + base * torch.randn(100_000) * 1e-5
    delta = len(DeltaCodec.from_name(name).encode(new, base))
    plain = len(DeltaCodec.from_name("plain-shuffle-zstd1").encode(new))
    assert delta < 0.75 * plain
    assert len(DeltaCodec.from_name(name).encode(base, base)) < 1000


def test_names_round_trip_and_bad_names_are_rejected():
    for name in CODECS:
        assert DeltaCodec.from_name(name).name == name
    assert not DeltaCodec.from_name("plain").needs_base and DeltaCodec.from_name("xor").needs_base
    for bad in ["zip", "xor-zstd", "xor-zstd99", "plain-zigzag", "xor-zigzag", "sub-shuffle-zigzag", "", None,
                "sub-zigzag-planes", "sub-shuffle-planes-zstd1", "sub-planes-shuffle-zstd1", "sub-planes-zigzag-zstd1"]:
        with pytest.raises(UnknownCodecError) as info:
            DeltaCodec.from_name(bad)
        assert isinstance(info.value, ValueError) and DEFAULT_CODEC in str(info.value)


def test_damaged_or_inconsistent_payloads_raise_integrity_error():
    codec = DeltaCodec.from_name(DEFAULT_CODEC)
    base, new = torch.randn(100), torch.randn(100)
    with pytest.raises(IntegrityError):
        codec.decode(codec.encode(new, base)[:10], torch.float32, (100,), base)
    with pytest.raises(IntegrityError, match="a xor tensor payload holds 12 bytes where 400 are needed; the update "
                                             "is damaged"):
        DeltaCodec.from_name("xor").decode(b"\0" * 12, torch.float32, (100,), base)
    with pytest.raises(IntegrityError, match="a tensor was stored with neither a full copy nor a base; the update "
                                             "metadata is inconsistent"):
        decode_chain(None, [], torch.float32, (100,))
    with pytest.raises(IntegrityError):
        codec.decode(codec.encode(new, base), torch.float32, (100,), None)
    with pytest.raises(IntegrityError):
        codec.decode(codec.encode(new, base), torch.float32, (10, 10), base)


LONGER = {"encodes a longer tensor": lambda codec, new, base: codec.encode(torch.cat([new, new[:1]]),
                                                                        torch.cat([base, base[:1]])),
          "has bytes after it": lambda codec, new, base: bytes(codec.encode(new, base)) + b"\0" * 4}


@pytest.mark.parametrize("name", CODECS)
@pytest.mark.parametrize("how", list(LONGER))
def test_a_payload_longer_than_its_tensor_raises_integrity_error(name, how):
    codec = DeltaCodec.from_name(name)
    base, new = _tensor_pair(torch.float32, (100,))
    with pytest.raises(IntegrityError):
        codec.decode(LONGER[how](codec, new, base), torch.float32, (100,), base)


def test_encoding_against_a_base_of_another_shape_or_none_is_refused():
    for base, got in [(torch.randn(5), "(torch.float32, (5,))"), (None, "None")]:
        with pytest.raises(IncompatibleModelError, match=re.escape(
                f"a xor delta needs a base tensor of dtype torch.float32 and shape (4,), got {got}; store the tensor "
                "with the plain codec instead")):
            DeltaCodec.from_name("xor").encode(torch.randn(4), base)


def test_a_codec_built_from_options_that_do_not_go_together_says_which_do():
    with pytest.raises(UnknownCodecError, match="ops are plain, xor and sub, zigzag goes only with sub, planes needs a "
                                                "zstd level and excludes shuffle, and zstd levels run from 1 to 22"):
        DeltaCodec("xor", zigzag=True)


def _planes_record(payload: bytes, planes: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The methods and lengths of a `planes` payload's decision record."""
    record = struct.unpack_from(f"<{planes}B{planes}Q", payload)
    return record[:planes], record[planes:]


@pytest.mark.parametrize("name", PLANES_CODECS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("size", [1, 3, 7, 1023, 65_537, 200_003], ids=str)
def test_planes_codecs_round_trip_odd_sizes_across_chunks(name, dtype, size, monkeypatch):
    monkeypatch.setattr(mmlib.util.delta, "_CHUNK_BYTES", 4096)  # many chunks, and a short last one
    monkeypatch.setattr(mmlib.util.delta, "_PARALLEL_PLANES_BYTES", 8192)  # the larger sizes: planes in threads
    codec = DeltaCodec.from_name(name)
    base, new = _tensor_pair(dtype, (size,))
    assert _bits(codec.decode(codec.encode(new, base), dtype, (size,), base)) == _bits(new)


@pytest.mark.parametrize("name", PLANES_CODECS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.int64], ids=str)
def test_planes_codecs_round_trip_sliced_and_transposed_tensors(name, dtype):
    codec = DeltaCodec.from_name(name)
    base, new = _tensor_pair(dtype, (40, 30))
    for view in (lambda t: t[::3, 1::2], lambda t: t.t(), lambda t: t[5:, :7].t()):
        assert _bits(codec.decode(codec.encode(view(new), view(base)), dtype, view(new).shape,
                                  view(base))) == _bits(view(new))


@pytest.mark.parametrize("name", PLANES_CODECS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64], ids=str)
def test_planes_codecs_keep_nans_signed_zeros_infinities_and_denormals(name, dtype):
    integer = {2: torch.int16, 4: torch.int32, 8: torch.int64}[dtype.itemsize]
    bits = 8 * dtype.itemsize
    patterns = [0, 1, 2, -1, 1 << (bits - 1), (1 << (bits - 1)) + 1, (1 << (bits - 2)) - 1, -(1 << (bits - 2)) + 3]
    special = torch.tensor([value - (1 << bits) if value >= 1 << (bits - 1) else value for value in patterns],
                           dtype=integer).view(dtype)  # denormals, -0.0, NaNs with payloads, both signs
    base = torch.cat([special.flip(0), torch.tensor([float("nan"), -0.0, float("-inf"), 1e-45], dtype=dtype)])
    new = torch.cat([special, torch.tensor([-0.0, float("inf"), float("nan"), 0.0], dtype=dtype)])
    codec = DeltaCodec.from_name(name)
    assert _bits(codec.decode(codec.encode(new, base), dtype, new.shape, base)) == _bits(new)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_planes_of_a_large_delta_are_stored_raw_or_compressed_by_how_they_compress(dtype):
    generator = torch.Generator().manual_seed(3)
    base = torch.randn(300_000, generator=generator, dtype=dtype)
    new = base - 1e-3 * torch.randn(300_000, generator=generator, dtype=dtype) * base
    codec = DeltaCodec.from_name("sub-zigzag-planes-zstd1")
    payload = bytes(codec.encode(new, base))
    methods, lengths = _planes_record(payload, dtype.itemsize)
    assert methods[0] == 0 and lengths[0] == new.numel(), "the lowest mantissa byte of a delta is noise: raw"
    assert methods[-1] == 1 and lengths[-1] < new.numel() // 4, "the sign and exponent byte of a delta compresses"
    assert _bits(codec.decode(payload, dtype, new.shape, base)) == _bits(new)
    shuffled = len(DeltaCodec.from_name("sub-zigzag-shuffle-zstd1").encode(new, base))
    assert len(payload) < 1.05 * shuffled


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.complex128], ids=str)
def test_a_plain_full_copy_becomes_a_view_of_a_payload_given_away(dtype):
    value = torch.randn(1000, dtype=torch.float64).to(dtype)
    plain = DeltaCodec()
    payload = bytearray(plain.encode(value))
    address = np.frombuffer(payload, dtype=np.uint8).ctypes.data
    shared = decode_chain(None, [(plain, memoryview(payload))], dtype, (1000,), share_payload=True)
    assert _bits(shared) == _bits(value) and shared.data_ptr() == address, "no copy of a blob read for the caller"
    owned = decode_chain(None, [(plain, memoryview(payload))], dtype, (1000,))
    assert _bits(owned) == _bits(value) and owned.data_ptr() != address, "without leave, the payload is copied"
    read_only = bytes(payload)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns when it wraps a read-only buffer
        copied = decode_chain(None, [(plain, read_only)], dtype, (1000,), share_payload=True)
    assert _bits(copied) == _bits(value)
    assert copied.data_ptr() != np.frombuffer(read_only, dtype=np.uint8).ctypes.data, "a read-only payload is copied"


@pytest.mark.parametrize("name", ["xor", "sub-zigzag", "sub-zigzag-shuffle-zstd1", DEFAULT_CODEC])
def test_a_plain_keyframe_shared_with_its_blob_is_never_written(name):
    keyframe, new = torch.randn(4000), torch.randn(4000)
    plain, delta = DeltaCodec(), DeltaCodec.from_name(name)
    payload = bytearray(plain.encode(keyframe))  # writable, as an update blob read from a store is
    steps = [(plain, memoryview(payload)), (delta, delta.encode(new, keyframe))]
    assert _bits(decode_chain(None, steps, torch.float32, (4000,))) == _bits(new)
    assert bytes(payload) == _bits(keyframe), "decoding the delta wrote into the keyframe's stored bytes"


def test_a_chain_mixing_planes_and_other_codecs_decodes_to_its_last_version():
    versions = [torch.randn(5000)]
    for _ in range(4):
        versions.append(versions[-1] + torch.randn(5000) * 1e-4)
    keyframe = DeltaCodec.from_name("plain-planes-zstd3")
    steps = [(keyframe, keyframe.encode(versions[0]))]
    for codec_name, (old, new) in zip(["sub-zigzag-planes-zstd1", "xor-planes-zstd1", DEFAULT_CODEC,
                                       "sub-planes-zstd1"], zip(versions, versions[1:])):
        codec = DeltaCodec.from_name(codec_name)
        steps.append((codec, codec.encode(new, old)))
    assert _bits(decode_chain(None, steps, torch.float32, (5000,))) == _bits(versions[-1])


def _damaged_payloads(payload: bytes, planes: int):
    """Every single-field corruption of a `planes` payload's decision record, plus truncations."""
    record = struct.calcsize(f"<{planes}B{planes}Q")
    methods, lengths = _planes_record(payload, planes)
    for plane in range(planes):
        flipped = bytearray(payload)
        flipped[plane] = 1 - methods[plane]
        yield f"method of plane {plane} flipped", bytes(flipped)
        unknown = bytearray(payload)
        unknown[plane] = 7
        yield f"method of plane {plane} unknown", bytes(unknown)
        longer = bytearray(payload)
        struct.pack_into("<Q", longer, planes + 8 * plane, lengths[plane] + 1)
        yield f"length of plane {plane} grown", bytes(longer) + b"\0"
    yield "truncated record", payload[:record - 1]
    yield "truncated planes", payload[:-1]
    yield "empty", b""


@pytest.mark.parametrize("name", ["sub-zigzag-planes-zstd1", "plain-planes-zstd3"])
@pytest.mark.parametrize("threaded", [False, True], ids=["planes-in-turn", "planes-in-threads"])
def test_damaged_planes_payloads_raise_integrity_error(name, threaded, monkeypatch):
    if threaded:
        monkeypatch.setattr(mmlib.util.delta, "_PARALLEL_PLANES_BYTES", 0)
    base = torch.randn(50_000)
    new = base + torch.randn(50_000) * 1e-3
    codec = DeltaCodec.from_name(name)
    payload = bytes(codec.encode(new, base))
    methods, _ = _planes_record(payload, 4)
    assert set(methods) == {0, 1}, "both a raw and a compressed plane are needed to damage each kind"
    for what, damaged in _damaged_payloads(payload, 4):
        with pytest.raises(IntegrityError):
            codec.decode(damaged, torch.float32, (50_000,), base)
            pytest.fail(f"{what}: decoded without an error")
    with pytest.raises(IntegrityError, match="a sub-zigzag-planes-zstd1 delta was stored without a base tensor; the "
                                             "update metadata is inconsistent"):
        DeltaCodec.from_name("sub-zigzag-planes-zstd1").decode(payload, torch.float32, (50_000,), None)


def test_zstd_contexts_are_one_per_thread_and_decode_on_after_a_damaged_payload():
    """Plane codecs reuse a compressor (up to level 3) and a decompressor per thread: never one across threads (zstd
    contexts are not thread-safe), and a payload that failed leaves nothing behind for the next."""
    base = torch.randn(50_000)
    new = base + torch.randn(50_000) * 1e-3
    codec = DeltaCodec.from_name(DEFAULT_CODEC)
    payload = bytes(codec.encode(new, base))
    for _, damaged in _damaged_payloads(payload, 4):
        with pytest.raises(IntegrityError):
            codec.decode(damaged, torch.float32, (50_000,), base)
        assert torch.equal(codec.decode(payload, torch.float32, (50_000,), base).view(torch.int32),
                           new.view(torch.int32))

    def contexts() -> tuple:
        return mmlib.util.delta._decompressor(), mmlib.util.delta._plane_compressor(1)

    here, again = contexts(), contexts()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        there = pool.submit(contexts).result()
    assert here[0] is again[0] and here[1] is again[1]
    assert there[0] is not here[0] and there[1] is not here[1]
    assert mmlib.util.delta._plane_compressor(19) is not mmlib.util.delta._plane_compressor(19)  # megabytes each


@pytest.mark.parametrize("codec_name", CODECS)
@pytest.mark.parametrize("dtype", DTYPES + [torch.complex128])
@pytest.mark.parametrize("numel", [0, 1, 7, 1031, 300_007])
def test_decoding_into_the_base_in_place_gives_what_decoding_gives(codec_name, dtype, numel):
    codec = DeltaCodec.from_name(codec_name)
    generator = torch.Generator().manual_seed(numel)
    base = torch.randint(0, 256, (numel * dtype.itemsize,), dtype=torch.uint8, generator=generator)
    new = base.clone()
    new[::3] = torch.randint(0, 256, new[::3].shape, dtype=torch.uint8, generator=generator)
    if dtype == torch.bool:
        base, new = base % 2, new % 2
    base, new = base.view(dtype), new.view(dtype)
    encoded = codec.encode(new, base if codec.needs_base else None)
    target = mmlib.util.delta.bits_of(np.frombuffer(_bits(base) if codec.needs_base else bytes(base.nbytes),
                                                    dtype=np.uint8).copy(), dtype.itemsize)
    codec.decode_into(encoded, target, dtype.itemsize)
    assert target.tobytes() == _bits(new)
    with pytest.raises(IntegrityError):  # a payload cut short
        codec.decode_into(bytes(memoryview(encoded))[:-1] if numel else b"junk", target, dtype.itemsize)
