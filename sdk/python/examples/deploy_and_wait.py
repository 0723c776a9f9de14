"""Deploys a container, waits until it is ready, prints its logs and mints
a token for it.

    pip install sdk/python
    ROUSE_ENDPOINT=127.0.0.1:7071 ROUSE_TOKEN=$(cat .rouse-local/node1/admin-token) \
      python3 sdk/python/examples/deploy_and_wait.py 127.0.0.1:5055/rouse/hello:latest
"""

import os
import sys

from rouse import Client, RouseError

image = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:5055/rouse/hello:latest"
c = Client(os.environ.get("ROUSE_ENDPOINT", "127.0.0.1:7071"), token=os.environ.get("ROUSE_TOKEN"))
try:
    c.create_namespace("pyshop", env={"FROM": "python"})
except RouseError as e:
    if e.code.name != "ALREADY_EXISTS":
        raise
c.deploy("pyshop", "web", image=image, min_scale=1, max_scale=2, memory=64, private=True)
ready = c.wait_ready("pyshop", "web")
print("ready:", ", ".join(f"{i.id} on node {i.node}" for i in ready))
for instance, data in c.logs("pyshop", "web"):
    sys.stdout.write(f"[{instance}] {data.decode(errors='replace')}")
token_id, token = c.create_token("pyshop", "web", expires_in_seconds=3600)
print("token id:", token_id)
print("token:", token)
