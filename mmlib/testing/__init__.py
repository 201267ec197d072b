"""Helpers for testing mmlib and stores built on it: servers that speak the stores' wire protocols locally."""
