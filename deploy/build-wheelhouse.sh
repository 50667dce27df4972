#!/usr/bin/env bash
# Fills a wheelhouse with every third-party wheel cnm's images need, so that
# `docker build` installs offline (pip install --no-index --find-links), and
# writes requirements.txt pinning exactly those wheels. Runs on the build
# host, which can reach PyPI.
#
#   deploy/build-wheelhouse.sh [DIR]        default DIR: build/wheelhouse
#
# Environment: PYTHON (default .venv/bin/python, else python3). Its version
# must match the base image's python3 (3.11 in bookworm): wheels are per ABI.
set -euo pipefail
cd "$(dirname "$0")/.."

DIR=${1:-build/wheelhouse}
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
mkdir -p "$DIR"
rm -f "$DIR"/*.whl "$DIR/requirements.txt" "$DIR/dependencies.in"
log="$DIR/pip-wheel.log"
# cnm's own dependencies, read from pyproject.toml; cnm itself is built from
# source inside the image, where setuptools and wheel (its build backend) must
# come from here too, as the image build has no index. pip resolves
# environment markers for the interpreter running it, not for the image's:
# requirements that only bookworm's python3 (3.11.2) pulls in are named here
# (redis needs async-timeout below 3.11.3).
TARGET_ONLY=("async-timeout>=4.0.3")
"$PYTHON" -c 'import tomllib
with open("pyproject.toml", "rb") as f:
    project = tomllib.load(f)
print("\n".join(project["project"]["dependencies"] + project["build-system"]["requires"]))
' > "$DIR/dependencies.in"
printf '%s\n' wheel "${TARGET_ONLY[@]}" >> "$DIR/dependencies.in"
if ! "$PYTHON" -m pip wheel --wheel-dir "$DIR" --requirement "$DIR/dependencies.in" \
    >"$log" 2>&1; then
  cat "$log" >&2
  exit 1
fi
for wheel in "$DIR"/*.whl; do
  base=${wheel##*/}
  IFS=- read -r name version _ <<< "$base"
  echo "$name==$version"
done | sort > "$DIR/requirements.txt"
echo "wheelhouse $DIR: $(wc -l < "$DIR/requirements.txt") wheels" >&2
