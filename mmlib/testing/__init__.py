"""Helpers for testing mmlib and stores built on it: the conformance suites of the two store interfaces
(`mmlib.testing.stores`, which needs pytest), servers that speak the stores' wire protocols locally
(`mmlib.testing.s3_server`) and a proxy that fails chosen HTTP requests in front of one
(`mmlib.testing.fault_proxy`)."""
