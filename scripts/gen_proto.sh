#!/usr/bin/env bash
# Regenerate p2pnet/core/kad/dht_pb2.py and dht_pb2.pyi from dht.proto.
#
#   bash scripts/gen_proto.sh
#
# protoc comes from grpcio-tools, installed into a throwaway virtualenv so the
# project's own environment is left alone. The version is pinned because the
# generated module checks, at import, that the protobuf runtime is at least as new
# as the protoc that wrote it (same major version): grpcio-tools 1.81.1 bundles
# protoc 33.5, i.e. gencode 6.33.5, which runs on protobuf 6.33.5 .. 6.x. Newer
# grpcio-tools (1.82+) bundle protoc 35 (gencode 7.x) and need protobuf 7.
# Change GRPCIO_TOOLS only together with the protobuf the project installs.
set -euo pipefail

GRPCIO_TOOLS="${GRPCIO_TOOLS:-1.81.1}"
PYTHON="${PYTHON:-python3}"

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$(mktemp -d)"
trap 'rm -rf "$venv"' EXIT

"$PYTHON" -m venv "$venv"
"$venv/bin/pip" install --quiet "grpcio-tools==$GRPCIO_TOOLS"
"$venv/bin/python" -m grpc_tools.protoc --version

# Run from the repository root with -I. so the descriptor is registered as
# "p2pnet/core/kad/dht.proto" and the module as p2pnet.core.kad.dht_pb2.
cd "$repo"
"$venv/bin/python" -m grpc_tools.protoc -I. \
    --python_out=. --pyi_out=. \
    p2pnet/core/kad/dht.proto

head -n 5 p2pnet/core/kad/dht_pb2.py
echo "wrote p2pnet/core/kad/dht_pb2.py and p2pnet/core/kad/dht_pb2.pyi"
