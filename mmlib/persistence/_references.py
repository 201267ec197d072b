"""Reference ids of stored files: `<digest>/<file name>`, plus a trailing `/` when the file is a directory.

The digest names the blob; the file name is what recovery restores it as. Parsing refuses anything that could
climb out of a restore directory (`..`, a separator in the name) or name no blob (a digest of the wrong form).
"""

from mmlib.errors import InvalidIdError

DIGEST_LENGTH = 64
DIRECTORY_MARK = "/"
_HEX_DIGITS = frozenset("0123456789abcdef")


def make_reference_id(digest: str, name: str, is_directory: bool = False) -> str:
    """The reference id of the blob `digest` restored as `name` (a directory archive when `is_directory`)."""
    return f"{digest}/{name}{DIRECTORY_MARK if is_directory else ''}"


def split_reference_id(reference_id: str) -> tuple[str, str, bool]:
    """Split `<digest>/<name>[/]` into (digest, file name, is_directory); InvalidIdError when it is malformed."""
    if not isinstance(reference_id, str):
        raise InvalidIdError(f"a file reference id is a string, got {type(reference_id).__name__}")
    digest, sep, name = reference_id.partition("/")
    is_directory = name.endswith(DIRECTORY_MARK)
    name = name.rstrip(DIRECTORY_MARK)
    if (not sep or len(digest) != DIGEST_LENGTH or not set(digest) <= _HEX_DIGITS or not name or "/" in name
            or name in (".", "..")):
        raise InvalidIdError(
            f"{reference_id!r} is not a file reference id (expected '<digest>/<file name>'); pass the reference_id "
            "a save set")
    return digest, name, is_directory
