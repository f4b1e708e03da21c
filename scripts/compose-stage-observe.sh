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
# Module versions of the releases docker-compose.yaml pins.
PROMETHEUS_MODULE="github.com/prometheus/prometheus@v0.316.0" # Prometheus 3.16.0
JAEGER_MODULE="github.com/jaegertracing/jaeger@v1.75.0"       # Jaeger 2.12.0
cache="$root/.tools/observe"
mkdir -p "$cache" deploy/stage/observe

# build NAME MODULE@VERSION PACKAGE [LDFLAGS]: builds inside a copy of the
# module (their go.mod files have replace directives and go.work files
# that `go install pkg@version` refuses).
build() {
  local name="$1" module="$2" pkg="$3" ldflags="${4:-}"
  local out="$cache/$name-${module##*@}"
  if ! [ -x "$out" ]; then
    echo "compose-stage-observe: building $name from $module (a few minutes, once)" >&2
    local src work
    src="$("$GO" mod download -json "$module" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')"
    [ -n "$src" ] || { echo "compose-stage-observe: could not download $module" >&2; exit 1; }
    work="$(mktemp -d)"
    cp -r "$src/." "$work/"
    chmod -R u+w "$work"
    (cd "$work" && GOWORK=off CGO_ENABLED=0 "$GO" build -trimpath -ldflags "-s -w $ldflags" -o "$out.tmp" "$pkg")
    rm -rf "$work"
    mv "$out.tmp" "$out"
  fi
  cp "$out" "deploy/stage/observe/$name"
}

build prometheus "$PROMETHEUS_MODULE" ./cmd/prometheus \
  "-X github.com/prometheus/common/version.Version=3.16.0"
build jaeger "$JAEGER_MODULE" ./cmd/jaeger \
  "-X github.com/jaegertracing/jaeger/internal/version.latestVersion=v2.12.0"
[ -d deploy/stage/state ] || mkdir -p deploy/stage/state
echo "compose-stage-observe: staged in deploy/stage/observe" >&2
