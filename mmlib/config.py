"""Values from the ini file named by the MMLIB_CONFIG environment variable (its [VALUES] section)."""

import configparser
import os

from mmlib.constants import MMLIB_CONFIG, VALUES
from mmlib.errors import ConfigurationError


def config_value(key: str) -> str:
    """The value of `key` in the [VALUES] section of the MMLIB_CONFIG ini file."""
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
