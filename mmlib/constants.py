"""Public constants shared with the original MMlib API."""

MMLIB_CONFIG = "MMLIB_CONFIG"
CURRENT_DATA_ROOT = "current_data_root"
VALUES = "VALUES"
ID = "id"
