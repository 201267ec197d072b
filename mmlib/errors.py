"""Typed errors raised by mmlib; each message says what went wrong and what to do."""


class MMLibError(Exception):
    """Base class of every error mmlib raises on purpose."""


class NotFoundError(MMLibError, KeyError):
    """Something the caller named by id is not in the store."""

    def __str__(self) -> str:  # KeyError would show the message in quotes
        return str(self.args[0]) if self.args else ""


class ModelNotFoundError(NotFoundError):
    """No stored model has this id."""


class DocumentNotFoundError(ModelNotFoundError):
    """No stored document has this id and type.

    A ModelNotFoundError too: before these subclasses existed every missing item raised that, and callers catch it.
    """


class BlobNotFoundError(ModelNotFoundError):
    """No stored blob has this digest (a ModelNotFoundError too, as DocumentNotFoundError is)."""


class AmbiguousModelIdError(ModelNotFoundError):
    """An id prefix matches several models; give more of the id."""


class InvalidIdError(MMLibError, ValueError):
    """An id or reference id is malformed (not merely absent): it cannot name anything in any store."""


class ModelInUseError(MMLibError, ValueError):
    """A model cannot be removed: other stored models derive from it."""


class IntegrityError(MMLibError, ValueError):
    """Stored bytes or recovered weights do not match the digest recorded at save time."""


class MissingBaseError(IntegrityError, NotFoundError):
    """A stored model names a base that is not in the store: its lineage is broken (deleted or damaged metadata).

    An IntegrityError, as every broken lineage is, and a NotFoundError for code that handles absent items; not a
    ModelNotFoundError, which would say the model asked for is absent.
    """


class IncompatibleModelError(MMLibError, ValueError):
    """A model cannot be stored relative to the given base (e.g. a different architecture)."""


class InvalidArgumentError(MMLibError, TypeError):
    """An argument of a public entry point has the wrong type (a store that is not one, a flag that is no bool)."""


class DeviceUnavailableError(MMLibError, RuntimeError):
    """The device a model is to be recovered to does not exist here (no CUDA, fewer GPUs, another backend)."""


class InvalidSaveInfoError(MMLibError, ValueError):
    """The save request is incomplete or inconsistent; nothing was written."""


class UnsafeCodeError(MMLibError, ValueError):
    """Stored metadata names code in a form mmlib refuses to run (not an identifier or plain import)."""


class StoreUnavailableError(MMLibError, OSError):
    """The store cannot be opened, written or reached."""


class StoreFormatError(StoreUnavailableError):
    """The store is in a format this mmlib does not read (written by an older or newer version)."""


class EnvironmentMismatchError(MMLibError, RuntimeError):
    """Strict mode: the current environment differs from the one a model was saved in."""


class EnvironmentMismatchWarning(UserWarning):
    """The current environment differs from the one a model was saved in."""


class ConfigurationError(MMLibError, LookupError):
    """The MMLIB_CONFIG ini file, or a value it must hold, is missing or unusable."""


class RestoreError(MMLibError, ValueError):
    """A stored object cannot be rebuilt with what the caller passed or with what was loaded."""


class UnknownCodecError(MMLibError, ValueError):
    """A codec name that does not follow `<op>[-zigzag][-shuffle|-planes][-zstd<level>]`."""
