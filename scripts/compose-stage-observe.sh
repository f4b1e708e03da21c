#!/usr/bin/env bash
# Stages the observe profile's Prometheus and Jaeger for their offline
# images (deploy/offline/Dockerfile.{prometheus,jaeger}): each is built
# once from its Go module (the release docker-compose.yaml pins for the
# official image), static, cached in .tools/observe. Run after
# scripts/compose-stage.sh, which empties deploy/stage.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
GO="${GO:-go}"
# The releases docker-compose.yaml pins, and their modules' versions.
PROMETHEUS_RELEASE="3.16.0"
PROMETHEUS_MODULE="github.com/prometheus/prometheus@v0.316.0"
JAEGER_RELEASE="2.12.0"
JAEGER_MODULE="github.com/jaegertracing/jaeger@v1.75.0"
cache="$root/.tools/observe"
mkdir -p "$cache" deploy/stage/observe deploy/stage/state

# stage NAME MODULE@VERSION PACKAGE LDFLAGS: built once into the cache.
stage() {
  local name="$1" module="$2" pkg="$3" ldflags="$4"
  local out="$cache/$name-${module##*@}"
  if ! [ -x "$out" ]; then
    echo "compose-stage-observe: building $name from $module (a few minutes, once)" >&2
    GO="$GO" CGO_ENABLED=0 ./scripts/go-build-module.sh "$module" "$pkg" "$out" "$ldflags"
  fi
  cp "$out" "deploy/stage/observe/$name"
}

stage prometheus "$PROMETHEUS_MODULE" ./cmd/prometheus \
  "-X github.com/prometheus/common/version.Version=$PROMETHEUS_RELEASE"
stage jaeger "$JAEGER_MODULE" ./cmd/jaeger \
  "-X github.com/jaegertracing/jaeger/internal/version.latestVersion=v$JAEGER_RELEASE"
echo "compose-stage-observe: staged in deploy/stage/observe" >&2
