#!/usr/bin/env bash
# go-build-module.sh MODULE@VERSION PACKAGE OUT [LDFLAGS]: builds a program
# from the Go module proxy inside a copy of its own module (`go install
# pkg@version` refuses modules whose go.mod has replace directives, as
# Compose's and Jaeger's do, and a module's go.work names folders the
# proxy does not carry). OUT (an absolute path) appears only once built;
# the caller's environment (CGO_ENABLED, GO for the toolchain) holds.
set -euo pipefail
module="$1" pkg="$2" out="$3" ldflags="${4:-}"
GO="${GO:-go}"
src="$("$GO" mod download -json "$module" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')"
[ -n "$src" ] || { echo "go-build-module: could not download $module" >&2; exit 1; }
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cp -r "$src/." "$work/"
chmod -R u+w "$work"
mkdir -p "$(dirname "$out")"
(cd "$work" && GOWORK=off "$GO" build -trimpath -ldflags "-s -w $ldflags" -o "$out.tmp" "$pkg")
mv "$out.tmp" "$out"
