"""A small typed client over the generated stubs: deploy, get, list,
delete, wait for readiness, logs, tokens, secrets, namespaces.

    from rouse import Client
    c = Client("127.0.0.1:7071", token=open(".rouse-local/node1/admin-token").read().strip())
    c.create_namespace("shop")
    c.deploy("shop", "web", image="127.0.0.1:5055/rouse/hello:latest", min_scale=1)
    c.wait_ready("shop", "web")
"""

from __future__ import annotations

import time
from typing import Dict, Iterator, List, Optional, Tuple

import grpc

from .v1 import api_pb2 as pb
from .v1 import api_pb2_grpc as rpc


class RouseError(Exception):
    """An API error: the gRPC code and the server's one-line message (which
    names the field and the rule for bad input)."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


def _call(fn, req, metadata):
    try:
        return fn(req, metadata=metadata)
    except grpc.RpcError as e:  # pragma: no cover - exercised by the live test
        raise RouseError(e.code(), e.details()) from None


class Client:
    """Talks to any node's API (`HOST:PORT`, plain; or TLS with `ca_pem`)."""

    def __init__(self, endpoint: str = "127.0.0.1:7070", token: Optional[str] = None,
                 ca_pem: Optional[bytes] = None):
        endpoint = endpoint.removeprefix("http://").removeprefix("https://")
        if ca_pem is not None:
            channel = grpc.secure_channel(endpoint, grpc.ssl_channel_credentials(ca_pem))
        else:
            channel = grpc.insecure_channel(endpoint)
        self._md = [("authorization", f"Bearer {token}")] if token else []
        self.namespaces = rpc.NamespaceServiceStub(channel)
        self.containers = rpc.ContainerServiceStub(channel)
        self.secrets = rpc.SecretServiceStub(channel)
        self.tokens = rpc.TokenServiceStub(channel)
        self.cluster = rpc.ClusterServiceStub(channel)

    # ------------------------------------------------------------ namespaces

    def create_namespace(self, name: str, env: Optional[Dict[str, str]] = None) -> pb.Namespace:
        return _call(self.namespaces.Create, pb.CreateNamespaceRequest(name=name, env=env or {}), self._md)

    def get_namespace(self, name: str) -> pb.Namespace:
        return _call(self.namespaces.Get, pb.GetNamespaceRequest(name=name), self._md)

    # ------------------------------------------------------------ containers

    def deploy(self, namespace: str, name: str, image: Optional[str] = None, *,
               port: Optional[int] = None, min_scale: Optional[int] = None,
               max_scale: Optional[int] = None, max_concurrency: Optional[int] = None,
               cpu: Optional[int] = None, memory: Optional[int] = None,
               timeout_seconds: Optional[int] = None, env: Optional[Dict[str, str]] = None,
               private: Optional[bool] = None) -> pb.Container:
        """Creates the container or updates the settings given (cpu in
        mVCPU, memory in MB)."""
        req = pb.DeployContainerRequest(namespace=namespace, name=name, env=env or {})
        for field, value in [("image", image), ("port", port), ("min_scale", min_scale),
                             ("max_scale", max_scale), ("max_concurrency", max_concurrency),
                             ("cpu_mvcpu", cpu), ("memory_mb", memory),
                             ("timeout_seconds", timeout_seconds)]:
            if value is not None:
                setattr(req, field, value)
        if private is not None:
            req.privacy = pb.PRIVACY_PRIVATE if private else pb.PRIVACY_PUBLIC
        return _call(self.containers.Deploy, req, self._md)

    def get(self, namespace: str, name: str) -> pb.Container:
        return _call(self.containers.Get, pb.GetContainerRequest(namespace=namespace, name=name), self._md)

    def list(self, namespace: str = "") -> List[pb.Container]:
        return list(_call(self.containers.List, pb.ListContainersRequest(namespace=namespace), self._md).containers)

    def delete(self, namespace: str, name: str) -> None:
        _call(self.containers.Delete, pb.DeleteContainerRequest(namespace=namespace, name=name), self._md)

    def wait_ready(self, namespace: str, name: str, count: int = 1, timeout: float = 120.0) -> List[pb.Instance]:
        """Waits until `count` instances of the container's current
        generation are ready; raises on a failed instance or the timeout."""
        deadline = time.monotonic() + timeout
        while True:
            c = self.get(namespace, name)
            current = [i for i in c.instances if i.generation == c.generation]
            failed = [i for i in current if i.state == "failed"]
            if failed:
                raise RouseError(grpc.StatusCode.FAILED_PRECONDITION,
                                 f"instance {failed[0].id} failed: {failed[0].message}")
            ready = [i for i in current if i.state == "ready"]
            if len(ready) >= count:
                return ready
            if time.monotonic() > deadline:
                raise TimeoutError(f"{namespace}/{name}: {len(ready)} of {count} ready after {timeout}s")
            time.sleep(0.25)

    def logs(self, namespace: str, name: str, tail_bytes: int = 0) -> Iterator[Tuple[str, bytes]]:
        """The kept logs of the container's instances: (instance, bytes) chunks."""
        req = pb.LogsRequest(namespace=namespace, name=name, tail_bytes=tail_bytes)
        try:
            for chunk in self.containers.Logs(req, metadata=self._md):
                yield chunk.instance, chunk.data
        except grpc.RpcError as e:  # pragma: no cover
            raise RouseError(e.code(), e.details()) from None

    # ---------------------------------------------------------------- tokens

    def create_token(self, namespace: str, container: str = "", expires_in_seconds: int = 0) -> Tuple[str, str]:
        """A token for the namespace's private containers (or one of them):
        (id, token). The token is shown only here."""
        r = _call(self.tokens.Create, pb.CreateTokenRequest(
            namespace=namespace, container=container, expires_in_seconds=expires_in_seconds), self._md)
        return r.id, r.token

    def revoke_token(self, token_id: str) -> None:
        _call(self.tokens.Revoke, pb.RevokeTokenRequest(id=token_id), self._md)

    # --------------------------------------------------------------- secrets

    def set_secrets(self, namespace: str, values: Dict[str, str], container: str = "") -> List[pb.SecretInfo]:
        scope = pb.SecretScope(namespace=namespace, container=container)
        return list(_call(self.secrets.Set, pb.SetSecretsRequest(scope=scope, values=values), self._md).secrets)

    def list_secrets(self, namespace: str, container: str = "") -> List[pb.SecretInfo]:
        scope = pb.SecretScope(namespace=namespace, container=container)
        return list(_call(self.secrets.List, pb.ListSecretsRequest(scope=scope), self._md).secrets)
