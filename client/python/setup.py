"""Builds the package with its gRPC stubs generated from ../../proto.

The stubs (`shoal.v1.*_pb2`, `*_pb2_grpc`) are generated at build time with
grpcio-tools from the repository's .proto files and never edited by hand;
they are not in the source tree. Install from a checkout:
`pip install ./client/python`.
"""
import importlib.metadata
import importlib.resources
import pathlib

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = pathlib.Path(__file__).resolve().parent
PROTO_ROOT = HERE.parent.parent / "proto" / "proto"


class BuildWithStubs(build_py):
    def run(self):
        super().run()
        from grpc_tools import protoc

        out = pathlib.Path(self.build_lib)
        if not (PROTO_ROOT / "shoal" / "v1").is_dir():
            raise SystemExit(f"no .proto files at {PROTO_ROOT}: build from a Shoal checkout")
        protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / "shoal" / "v1").glob("*.proto"))
        include = str(importlib.resources.files("grpc_tools") / "_proto")
        args = ["protoc", f"-I{PROTO_ROOT}", f"-I{include}", f"--python_out={out}", f"--pyi_out={out}", f"--grpc_python_out={out}", *protos]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed on " + " ".join(protos))
        (out / "shoal" / "v1" / "__init__.py").write_text('"""Generated from proto/shoal/v1 at build time; do not edit."""\n')


def runtime_requirements():
    """The stubs need a grpcio and a protobuf runtime at least as new as
    the grpcio-tools (and the protobuf it bundles) that generate them."""
    tools = importlib.metadata.version("grpcio-tools")
    protobuf = importlib.metadata.version("protobuf")
    return [f"grpcio>={tools}", f"protobuf>={protobuf}", "numpy>=1.23"]


setup(cmdclass={"build_py": BuildWithStubs}, install_requires=runtime_requirements())
