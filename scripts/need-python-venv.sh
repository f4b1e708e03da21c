#!/usr/bin/env bash
# Makes sure python3 can make virtualenvs (Debian splits venv and ensurepip
# into python3-venv): installs the missing packages with apt-get.
set -euo pipefail
need_apt=()
command -v python3 >/dev/null 2>&1 || need_apt+=(python3)
if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then need_apt+=(python3-venv); fi
if [ "${#need_apt[@]}" -gt 0 ]; then
  echo "need-python-venv: installing ${need_apt[*]} with apt-get" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
