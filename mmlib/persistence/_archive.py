"""Stored directories: one reproducible tar archive per directory, unpacked with tarfile's `data` filter."""

import io
import os
import tarfile

from mmlib.errors import IntegrityError
from mmlib.persistence._hashing import HashingWriter


def write_directory_archive(directory: str, fileobj: HashingWriter) -> None:
    """Write a tar of `directory` (sorted names, no owners or times) so equal trees give equal bytes and one blob."""
    def normalise(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.mtime = 0
        return info

    # Writing, tarfile calls only write() and tell(); typeshed's protocol for `fileobj` asks for read and seek too.
    with tarfile.open(fileobj=fileobj, mode="w", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
        for root, dirs, files in os.walk(directory):
            dirs.sort()
            for name in sorted(files):
                full = os.path.join(root, name)
                tar.add(full, arcname=os.path.relpath(full, directory), filter=normalise)


def extract_directory_archive(archive: memoryview, target: str, reference_id: str) -> None:
    """Unpack a stored directory's archive into `target`.

    The `data` filter refuses absolute paths, `..`, links leading outside and device files, so a forged archive
    writes nothing outside `target`: it raises IntegrityError instead. Only uncompressed tar is read (mmlib writes
    no other), so a stored blob cannot make a recovery decompress anything.
    """
    try:
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:") as tar:  # plain tar, as written: no decompression
            tar.extractall(target, filter="data")
    except tarfile.TarError as error:
        raise IntegrityError(f"the stored directory {reference_id} is not an archive mmlib would write ({error}); "
                             f"nothing outside {os.path.dirname(target)} was written: run `mmlib verify` and "
                             "restore the store from a backup") from error
