"""Helpers: hashing and Merkle trees, delta codecs, dtype names, safetensors I/O, safe code loading, which
distribution provides a module, dummy data, MongoDB access, terminal tables, and threads for work that releases
the GIL."""
