"""Public constants shared with the original MMlib API."""

MMLIB_CONFIG = "MMLIB_CONFIG"
CURRENT_DATA_ROOT = "current_data_root"
VALUES = "VALUES"
ID = "id"
# Long operations (verifying many models, retraining a provenance chain) report each step to this logger at
# INFO level; the `mmlib` command shows it on a terminal.
PROGRESS_LOGGER = "mmlib.progress"
