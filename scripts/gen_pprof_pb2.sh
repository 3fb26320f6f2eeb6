#!/bin/sh
# Regenerate pressured/pprof/_pprof_pb2.py from pressured/pprof/profile.proto.
#
# protoc comes from grpcio-tools, a development tool only, installed in a throwaway venv.
# It is pinned to 1.62.3 (protoc 25.1) on purpose: that gencode carries no runtime version
# check, so the committed module loads with every protobuf runtime from 4.25 (the floor in
# pyproject.toml) up to 7.x, without warnings. Newer protoc releases emit
# ValidateProtobufRuntimeVersion(...) calls that refuse any runtime older than themselves.
set -eu
cd "$(dirname "$0")/.."
PROTOC_VENV="${PROTOC_VENV:-${TMPDIR:-/tmp}/pressured-protoc-venv}"
if [ ! -x "$PROTOC_VENV/bin/python" ]; then
    python3 -m venv "$PROTOC_VENV"
    "$PROTOC_VENV/bin/pip" install --quiet "grpcio-tools==1.62.3"
fi
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
# --proto_path=pressured/pprof registers the descriptor as "profile.proto".
"$PROTOC_VENV/bin/python" -m grpc_tools.protoc --proto_path=pressured/pprof --python_out="$out" \
    pressured/pprof/profile.proto
mv "$out/profile_pb2.py" pressured/pprof/_pprof_pb2.py
echo "wrote pressured/pprof/_pprof_pb2.py"
