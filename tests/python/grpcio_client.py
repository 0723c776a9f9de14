"""A Python grpcio client generated from proto/ as it is, against a node.

Usage: grpcio_client.py HOST:PORT OUT_DIR TOKEN
Generates stubs into OUT_DIR, creates a namespace, reads it back, checks
that a bad request is refused with the field named, and prints "ok".
"""
import os
import sys

from grpc_tools import protoc

endpoint, out, token = sys.argv[1], sys.argv[2], sys.argv[3]
auth = (("authorization", f"Bearer {token}"),)
root = os.path.join(os.path.dirname(__file__), "..", "..", "proto", "proto")
rc = protoc.main(["protoc", f"-I{root}", f"--python_out={out}", f"--grpc_python_out={out}",
                  os.path.join(root, "rouse/v1/api.proto")])
assert rc == 0, f"protoc failed: {rc}"
sys.path.insert(0, out)

import grpc  # noqa: E402
from rouse.v1 import api_pb2, api_pb2_grpc  # noqa: E402

ch = grpc.insecure_channel(endpoint)
ns = api_pb2_grpc.NamespaceServiceStub(ch)
try:
    ns.Create(api_pb2.CreateNamespaceRequest(name="no-token"))
    raise SystemExit("a call without a token was accepted")
except grpc.RpcError as e:
    assert e.code() == grpc.StatusCode.UNAUTHENTICATED, e
created = ns.Create(api_pb2.CreateNamespaceRequest(name="from-python", env={"LANG": "py"}), metadata=auth)
assert created.name == "from-python", created
got = ns.Get(api_pb2.GetNamespaceRequest(name="from-python"), metadata=auth)
assert got.env["LANG"] == "py", got
ct = api_pb2_grpc.ContainerServiceStub(ch)
try:
    ct.Deploy(api_pb2.DeployContainerRequest(namespace="from-python", name="x", image="i", timeout_seconds=1), metadata=auth)
    raise SystemExit("a 1s timeout was accepted")
except grpc.RpcError as e:
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e
    assert e.details().startswith("timeout:"), e.details()
status = api_pb2_grpc.ClusterServiceStub(ch).Status(api_pb2.ClusterStatusRequest(), metadata=auth)
assert status.leader_id == 1, status
print("ok")
