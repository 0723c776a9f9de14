"""Python SDK for rouse: `Client` for the common calls; the generated
stubs of every service are in `rouse.v1` (api_pb2, api_pb2_grpc)."""

from .client import Client, RouseError

__all__ = ["Client", "RouseError"]
