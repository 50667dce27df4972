#!/usr/bin/env bash
# Regenerates the Python stubs under cnm/ from protos/. CI runs it and fails
# on any difference, so the checked-in code never drifts from the protos.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
# google.api.field_behavior: the .proto is vendored (so buf lint runs offline) from
# the googleapis-common-protos package the services import its Python code from;
# copying it here makes the drift check catch a version that moved.
vendored=protos/google/api/field_behavior.proto
mkdir -p "$(dirname "$vendored")"
cp "$("$PYTHON" -c 'import google.api, pathlib; print(pathlib.Path(google.api.__path__[0]))')/field_behavior.proto" "$vendored"
for pkg in ipam netdriver orchestrator; do
  out=cnm/$pkg/v1
  rm -f "$out"/*_pb2*.py "$out"/*_pb2*.pyi
  mkdir -p "$out"
  touch "cnm/$pkg/__init__.py" "$out/__init__.py"
done
"$PYTHON" -m grpc_tools.protoc -I protos \
  --python_out=. --pyi_out=. --grpc_python_out=. \
  protos/cnm/ipam/v1/*.proto protos/cnm/netdriver/v1/*.proto protos/cnm/orchestrator/v1/*.proto
