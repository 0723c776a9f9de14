"""Stubs generated from proto/rouse/v1/api.proto when the package is built."""
