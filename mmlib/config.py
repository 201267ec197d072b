"""Values from the ini file named by the MMLIB_CONFIG environment variable (its [VALUES] section).

`config_override` replaces a value for the code running inside it only (a context variable: other threads and
asyncio tasks keep seeing the ini's value); provenance recovery uses it to give each recovery its own data root.
"""

import configparser
import contextlib
import os
from contextvars import ContextVar
from types import MappingProxyType
from typing import Iterator, Mapping

from mmlib.constants import MMLIB_CONFIG, VALUES
from mmlib.errors import ConfigurationError

_OVERRIDES: ContextVar[Mapping[str, str]] = ContextVar("mmlib_config_overrides", default=MappingProxyType({}))


@contextlib.contextmanager
def config_override(key: str, value: str) -> Iterator[None]:
    """While the block runs, `config_value(key)` returns `value` in this thread or task (others are unaffected)."""
    token = _OVERRIDES.set(MappingProxyType({**_OVERRIDES.get(), key: value}))
    try:
        yield
    finally:
        _OVERRIDES.reset(token)


def config_value(key: str) -> str:
    """The value of `key`: the innermost `config_override` of it, else the MMLIB_CONFIG ini file's."""
    overrides = _OVERRIDES.get()
    if key in overrides:
        return overrides[key]
    return ini_value(key)


def ini_value(key: str) -> str:
    """The value of `key` in the [VALUES] section of the MMLIB_CONFIG ini file (overrides ignored)."""
    path = os.environ.get(MMLIB_CONFIG)
    if not path:
        raise ConfigurationError(
            f"the {MMLIB_CONFIG} environment variable is not set; point it at an ini file whose [{VALUES}] "
            f"section sets {key} = ...")
    parser = configparser.ConfigParser(interpolation=None)
    try:
        read = parser.read(path)
    except configparser.Error as error:
        raise ConfigurationError(f"cannot parse the {MMLIB_CONFIG} file {path!r}: {error}") from error
    if not read:
        raise ConfigurationError(f"the {MMLIB_CONFIG} file {path!r} does not exist or cannot be read; "
                                 f"create it with a [{VALUES}] section that sets {key} = ...")
    if not parser.has_option(VALUES, key):
        raise ConfigurationError(f"the {MMLIB_CONFIG} file {path!r} has no {key!r} in its [{VALUES}] section; "
                                 f"add a line '{key} = ...' there")
    return parser.get(VALUES, key)
