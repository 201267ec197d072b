"""Where a MongoDB store lives, as text: the URI schemes, the default database and a host turned into a URI.

No pymongo here, so `mmlib.persistence.store` can recognise a MongoDB location without importing it.
"""

MONGO_SCHEMES = ("mongodb://", "mongodb+srv://")
DEFAULT_DB_NAME = "mmlib"


def mongo_uri(host: str) -> str:
    """Accept a bare host, `host:port` or a full `mongodb://` / `mongodb+srv://` URI."""
    if host.startswith(MONGO_SCHEMES):
        return host
    return f"mongodb://{host}"
