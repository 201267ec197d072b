"""Helpers: hashing, dummy data, safe code loading, MongoDB access, Merkle trees."""
