"""Helpers: hashing and Merkle trees, delta codecs, dtype names, safetensors I/O, safe code loading, dummy data,
MongoDB access, terminal tables, and threads for work that releases the GIL."""
