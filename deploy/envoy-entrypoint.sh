#!/bin/sh
# Starts Envoy with the router's job-id secret in its environment, from
# where the Wasm filter reads it: Envoy's configuration is readable on its
# admin port, its environment is not. The secret comes from the credentials
# directory the control plane shares with its Envoys (package xds/trust).
set -eu
secret_file="${DIFFUSION_ROUTER_JOB_SECRET_FILE:-/etc/envoy/xds-tls/envoy/job-secret}"
if [ -z "${DIFFUSION_ROUTER_JOB_SECRET:-}" ]; then
	if [ ! -r "$secret_file" ]; then
		echo "envoy-entrypoint: cannot read the job-id secret $secret_file (mount the router's xds-tls directory, or set DIFFUSION_ROUTER_JOB_SECRET)" >&2
		exit 1
	fi
	DIFFUSION_ROUTER_JOB_SECRET="$(cat "$secret_file")"
	export DIFFUSION_ROUTER_JOB_SECRET
fi
exec /usr/local/bin/envoy "$@"
