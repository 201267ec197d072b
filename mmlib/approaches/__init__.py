"""One module per save approach; `mmlib.save` re-exports the public classes."""
