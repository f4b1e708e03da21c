#!/usr/bin/env bash
# make compose-test: brings the project's own compose file up as a user
# would and drives it (deploy/composeup_test.go). Installs what it needs:
# Docker Engine from Debian if missing, the Compose CLI plugin (pinned)
# built from the Go module proxy into .tools/docker, and starts dockerd if
# none runs (and stops the one it started). Images are built from this
# machine's binaries (scripts/compose-stage.sh, deploy/compose.offline.yaml):
# no image registry is needed.
#
# With "observe" (make compose-observe-test) it brings up the observe
# profile instead (deploy/composeobserve_test.go), Prometheus and Jaeger
# built from their Go modules (scripts/compose-stage-observe.sh; minutes
# the first time, then cached).
set -euo pipefail
case "${1:-up}" in
  up) test_name=TestComposeUp ;;
  observe) test_name=TestComposeObserve ;;
  *) echo "usage: $0 [up|observe]" >&2; exit 2 ;;
esac
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
GO="${GO:-go}"
COMPOSE_VERSION="${COMPOSE_VERSION:-v5.6.0}"
export DOCKER_CONFIG="$root/.tools/docker"
plugin="$DOCKER_CONFIG/cli-plugins/docker-compose"

if ! command -v dockerd >/dev/null 2>&1; then
  echo "compose-test: installing Docker Engine (docker.io) with apt-get" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq docker.io >/dev/null
fi
if ! command -v docker >/dev/null 2>&1; then
  echo "compose-test: no docker CLI after installing docker.io" >&2
  exit 1
fi

if ! [ -x "$plugin" ] || ! "$plugin" version 2>/dev/null | grep -q "$COMPOSE_VERSION"; then
  echo "compose-test: building the Compose CLI plugin $COMPOSE_VERSION from the Go module proxy" >&2
  GO="$GO" ./scripts/go-build-module.sh "github.com/docker/compose/v5@$COMPOSE_VERSION" ./cmd "$plugin" \
    "-X github.com/docker/compose/v5/internal.Version=$COMPOSE_VERSION"
fi
docker compose version

started=""
if ! docker info >/dev/null 2>&1; then
  echo "compose-test: starting dockerd" >&2
  dockerd >"$root/.tools/docker/dockerd.log" 2>&1 &
  started=$!
  for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null 2>&1 || { echo "compose-test: dockerd did not start:" >&2; tail -20 "$root/.tools/docker/dockerd.log" >&2; exit 1; }
fi
stop_dockerd() {
  if [ -n "$started" ]; then
    kill "$started" 2>/dev/null || true
    for _ in $(seq 1 30); do kill -0 "$started" 2>/dev/null || break; sleep 1; done
  fi
}
trap stop_dockerd EXIT

./scripts/compose-stage.sh
if [ "$test_name" = TestComposeObserve ]; then
  GO="$GO" ./scripts/compose-stage-observe.sh
fi
"$GO" test -tags compose -count=1 -timeout 15m -run "^$test_name\$" -v ./deploy
