"""HashingWriter: every byte reaches the sink once, is counted and hashed, small writes inline and large ones in a
helper thread."""

import io

import pytest

from mmlib.persistence._hashing import PARALLEL_HASH_BYTES, HashingWriter
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
