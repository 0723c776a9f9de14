"""Generates the gRPC stubs from the repository's proto/ into rouse/v1 when
the package is built (pip install sdk/python), so they always match the API
of the tree they are built from."""

import os
import pathlib

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = pathlib.Path(__file__).resolve().parent
PROTO_ROOT = HERE.parent.parent / "proto" / "proto"


def generate():
    from grpc_tools import protoc  # build requirement

    out = HERE
    (out / "rouse" / "v1").mkdir(parents=True, exist_ok=True)
    include = pathlib.Path(protoc.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        str(PROTO_ROOT / "rouse" / "v1" / "api.proto"),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed on " + str(PROTO_ROOT))
    init = out / "rouse" / "v1" / "__init__.py"
    if not init.exists():
        init.write_text('"""Stubs generated from proto/rouse/v1/api.proto."""\n')


class BuildWithStubs(build_py):
    def run(self):
        if PROTO_ROOT.exists():
            generate()
        elif not (HERE / "rouse" / "v1" / "api_pb2.py").exists():
            raise RuntimeError(f"no stubs and no {PROTO_ROOT} to make them from")
        super().run()


if __name__ == "__main__":
    os.chdir(HERE)
    setup(cmdclass={"build_py": BuildWithStubs})
