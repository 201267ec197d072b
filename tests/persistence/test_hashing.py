"""HashingWriter: every byte reaches the sink once, is counted and hashed, small writes inline and large ones in a
helper thread; a blob read back must have its recorded size."""

import io

import pytest

from mmlib.errors import IntegrityError
from mmlib.persistence._hashing import PARALLEL_HASH_BYTES, HashingWriter, read_verified
from mmlib.util.hash import new_hasher


@pytest.mark.parametrize("sizes", [[], [5], [3, PARALLEL_HASH_BYTES + 7, 0, 11], [2 * PARALLEL_HASH_BYTES] * 2],
                         ids=["nothing", "small", "mixed", "large"])
def test_the_writer_passes_on_counts_and_hashes_every_byte(sizes):
    sink = io.BytesIO()
    writer = HashingWriter(sink)
    chunks = [bytes([index % 251]) * size for index, size in enumerate(sizes)]
    for chunk in chunks:
        assert writer.write(memoryview(chunk)) == len(chunk)
    writer.close()
    data = b"".join(chunks)
    assert sink.getvalue() == data
    assert writer.size == writer.tell() == len(data)
    assert writer.hasher.hexdigest() == new_hasher().update(data).hexdigest()


@pytest.mark.parametrize("stored", [b"abc", b"abcdef"], ids=["shorter", "longer"])
def test_a_blob_that_changed_size_while_read_is_corrupted(stored):
    digest = new_hasher().update(b"abcde").hexdigest()
    with pytest.raises(IntegrityError, match=f"blob {digest} is corrupted: it no longer holds its recorded 5 bytes"):
        read_verified(io.BytesIO(stored), 5, digest)
    assert bytes(read_verified(io.BytesIO(b"abcde"), 5, digest)) == b"abcde"
