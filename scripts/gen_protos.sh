#!/usr/bin/env bash
# Regenerates the Python stubs under cnm/ from protos/. CI runs it and fails
# on any difference, so the checked-in code never drifts from the protos.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
for pkg in ipam netdriver orchestrator; do
  out=cnm/$pkg/v1
  rm -f "$out"/*_pb2*.py "$out"/*_pb2*.pyi
  mkdir -p "$out"
  touch "cnm/$pkg/__init__.py" "$out/__init__.py"
done
"$PYTHON" -m grpc_tools.protoc -I protos \
  --python_out=. --pyi_out=. --grpc_python_out=. \
  protos/cnm/ipam/v1/*.proto protos/cnm/netdriver/v1/*.proto protos/cnm/orchestrator/v1/*.proto
