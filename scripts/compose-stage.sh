#!/usr/bin/env bash
# Stages what the offline images (deploy/offline/) are made of into
# deploy/stage/: the project's own static binaries and Wasm filter, the
# pinned Envoy from .tools/envoy with the few shared libraries it links,
# and the machine's CA bundle. The offline images have the same users,
# paths and entrypoints as the ones deploy/Dockerfile.* build from official
# base images where a registry is reachable; no registry is needed here.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
stage="$root/deploy/stage"
GO="${GO:-go}"
cd "$root"
./scripts/install-envoy.sh >/dev/null
rm -rf "$stage"
mkdir -p "$stage/bin" "$stage/envoy-root/usr/local/bin" "$stage/state"
for cmd in diffusion-router fake-worker envoy-entrypoint; do
  CGO_ENABLED=0 "$GO" build -trimpath -ldflags "-s -w" -o "$stage/bin/$cmd" "./cmd/$cmd"
done
GOOS=wasip1 GOARCH=wasm "$GO" build -buildmode=c-shared -o "$stage/diffusion-tagger.wasm" ./filter
envoy="$(readlink -f .tools/envoy/bin/envoy)"
cp "$envoy" "$stage/envoy-root/usr/local/bin/envoy"
# The libraries Envoy links (libc, libm, librt, libdl, libpthread and the
# loader), at the paths the binary asks for them.
ldd "$envoy" | awk '/=> \// {print $3} /^\s*\// {print $1}' | while read -r lib; do
  mkdir -p "$stage/envoy-root$(dirname "$lib")"
  cp -L "$lib" "$stage/envoy-root$lib"
done
# /lib64 is a link to /usr/lib64 or /lib on some systems: the loader must
# be where the binary's interpreter path says.
interp="$(readelf -l "$envoy" | sed -n 's/.*Requesting program interpreter: \(.*\)]/\1/p')"
if [ -n "$interp" ] && [ ! -e "$stage/envoy-root$interp" ]; then
  mkdir -p "$stage/envoy-root$(dirname "$interp")"
  cp -L "$interp" "$stage/envoy-root$interp"
fi
mkdir -p "$stage/envoy-root/tmp" "$stage/envoy-root/etc/envoy"
chmod 1777 "$stage/envoy-root/tmp"
cp /etc/ssl/certs/ca-certificates.crt "$stage/ca-certificates.crt" 2>/dev/null || : > "$stage/ca-certificates.crt"
echo "compose-stage: staged in $stage" >&2
