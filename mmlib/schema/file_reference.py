"""`FileReference` under its original import path."""

from mmlib.persistence.base import FileReference

__all__ = ["FileReference"]
