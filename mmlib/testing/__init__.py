"""Helpers for testing mmlib and stores built on it: the conformance suites of the two store interfaces
(`mmlib.testing.stores`, which needs pytest) and servers that speak the stores' wire protocols locally
(`mmlib.testing.s3_server`)."""
