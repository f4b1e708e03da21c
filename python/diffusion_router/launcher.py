"""Start the router from a trainer's process and make the calls a trainer makes.

Everything goes through the router's REST API; nothing here repeats the
router's logic. Errors the API answers are raised as :class:`RouterError`
carrying its JSON reason.
"""

from __future__ import annotations

import atexit
import collections
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import IO, Any, Deque, Dict, List, Mapping, Optional, Sequence, Union

from ._binary import binary_path, router_env

# What the binary prints on standard output once it serves: with its own
# Envoy, or (--external-envoy) the control plane alone.
_READY = re.compile(r"^diffusion-router: ready on (http://\S+) \(registry API (http://\S+)")
_READY_ALONE = re.compile(r"^diffusion-router: control plane ready; xDS at \S+, registry API at (\S+)$")


class _Stderr:
    """The default output: this process's standard error as it is when a
    line is written (a test runner or a trainer may swap sys.stderr)."""

    def __repr__(self) -> str:
        return "sys.stderr"


STDERR = _Stderr()


class RouterError(Exception):
    """The router answered a call with an error, or could not be reached
    (``status`` 0). ``reason`` is the API's ``error`` field; ``body`` the
    whole JSON answer."""

    def __init__(self, method: str, path: str, status: int, reason: str, body: Mapping[str, Any]):
        super().__init__(f"{method} {path}: {status} {reason}" if status else f"{method} {path}: {reason}")
        self.method = method
        self.path = path
        self.status = status
        self.reason = reason
        self.body = dict(body)


class RouterStartError(RuntimeError):
    """The router did not become ready. ``output`` holds its last lines."""

    def __init__(self, message: str, output: Sequence[str]):
        tail = "\n".join(output)
        super().__init__(f"{message}\nlast output of the router:\n{tail}" if tail else message)
        self.output = list(output)


@dataclass(frozen=True)
class WorkerResult:
    """One worker's answer to a fleet-wide call."""

    worker_url: str
    status_code: int
    body: Any

    @property
    def ok(self) -> bool:
        """A 2xx answer whose body does not say ``"success": false``."""
        if not 200 <= self.status_code <= 299:
            return False
        return not (isinstance(self.body, dict) and self.body.get("success") is False)


@dataclass(frozen=True)
class WeightUpdate:
    """The answer to ``update_weights_from_disk``: per-worker results and the
    version the fleet now serves."""

    weight_version: str
    model_path: str
    mode: str
    results: List[WorkerResult]
    succeeded: int
    failed: int
    quarantined: List[str]
    waited_for_pinned_s: float = 0.0
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_answer(cls, body: Mapping[str, Any]) -> "WeightUpdate":
        return cls(
            weight_version=str(body.get("weight_version", "")),
            model_path=str(body.get("model_path", "")),
            mode=str(body.get("mode", "")),
            results=[
                WorkerResult(str(r.get("worker_url", "")), int(r.get("status_code", 0)), r.get("body"))
                for r in body.get("results") or []
            ],
            succeeded=int(body.get("succeeded", 0)),
            failed=int(body.get("failed", 0)),
            quarantined=list(body.get("quarantined") or []),
            waited_for_pinned_s=float(body.get("waited_for_pinned_s", 0.0)),
            raw=dict(body),
        )


class WeightUpdateError(RouterError):
    """A weight update that did not succeed everywhere: ``update`` says which
    workers failed (they are quarantined: they may hold partial weights)."""

    def __init__(self, method: str, path: str, status: int, reason: str, body: Mapping[str, Any]):
        super().__init__(method, path, status, reason, body)
        self.update = WeightUpdate.from_answer(body)


class RouterClient:
    """The REST API of a running router (``url`` is its front port, or its
    registry API port). ``admin_token`` is sent with every call, as
    ``--admin-token`` requires for calls that change the fleet."""

    def __init__(self, url: str, *, admin_token: Optional[str] = None, timeout: float = 60.0):
        self.url = url.rstrip("/")
        self.admin_token = admin_token
        self.timeout = timeout

    def add_worker(self, url: str) -> Dict[str, Any]:
        """Register a worker; returns once every Envoy routes to it."""
        return self._call("POST", "/add_worker", {"url": url})

    def remove_worker(self, url: str) -> Dict[str, Any]:
        """Drain a worker: no new requests; it leaves once its own finish."""
        return self._call("POST", "/remove_worker", {"url": url})

    def workers(self) -> List[Dict[str, Any]]:
        """Every registered worker, with its state and weight version."""
        return list(self._call("GET", "/workers").get("workers") or [])

    def health(self) -> Dict[str, Any]:
        """The router's health. An unhealthy fleet is an answer, not an
        error: ``status`` is ``"unhealthy"`` (the API's 503)."""
        return self._call("GET", "/health", ok_statuses=(503,))

    def update_weights_from_disk(
        self,
        model_path: str,
        *,
        weight_version: Optional[str] = None,
        mode: Optional[str] = None,
        max_unavailable: Optional[int] = None,
        flush_cache: Optional[bool] = None,
        timeout: Optional[float] = None,
        **extra: Any,
    ) -> WeightUpdate:
        """Switch the fleet to the weights at ``model_path`` (``mode``
        ``"inplace"`` or ``"drain"``). Raises :class:`WeightUpdateError`,
        with the per-worker results, when any worker failed. ``timeout``
        defaults to none: an update takes as long as the workers do."""
        body: Dict[str, Any] = {"model_path": model_path, **extra}
        for key, value in (
            ("weight_version", weight_version),
            ("mode", mode),
            ("max_unavailable", max_unavailable),
            ("flush_cache", flush_cache),
        ):
            if value is not None:
                body[key] = value
        answer = self._call("POST", "/update_weights_from_disk", body, timeout=timeout, wait=True,
                            error=WeightUpdateError)
        return WeightUpdate.from_answer(answer)

    def _call(
        self,
        method: str,
        path: str,
        body: Optional[Mapping[str, Any]] = None,
        *,
        timeout: Optional[float] = None,
        wait: bool = False,
        ok_statuses: Sequence[int] = (),
        error: type = RouterError,
    ) -> Dict[str, Any]:
        data = None
        headers = {"Accept": "application/json"}
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self.admin_token:
            headers["Authorization"] = f"Bearer {self.admin_token}"
        req = urllib.request.Request(self.url + path, data=data, headers=headers, method=method)
        limit = timeout if timeout is not None else (None if wait else self.timeout)
        try:
            with urllib.request.urlopen(req, timeout=limit) as resp:
                return _decode(resp.read())
        except urllib.error.HTTPError as e:
            answer = _decode(e.read())
            if e.code in ok_statuses:
                return answer
            reason = answer.get("error") or answer.get("message") or e.reason or "no reason given"
            raise error(method, path, e.code, str(reason), answer) from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise RouterError(method, path, 0, f"router at {self.url} unreachable: {reason}", {}) from None


def _decode(raw: bytes) -> Dict[str, Any]:
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        return {"error": raw.decode(errors="replace").strip()}
    return value if isinstance(value, dict) else {"value": value}


def _free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _connect_host(host: str) -> str:
    """Where this process reaches a listener bound to ``host``."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


class Router(RouterClient):
    """The router, started as a child of this process::

        with Router(worker_urls=["http://gpu-1:30000"], port=30080) as router:
            router.update_weights_from_disk("/ckpt/step-100")

    ``start`` (or entering the block) returns once the router serves; the
    block's end, :meth:`stop`, or this interpreter's end stops it with its
    Envoy. If this process dies without running either (kill -9), the
    router sees its standard input close and stops itself.

    ``args`` are any further flags of ``diffusion-router`` (``--help`` lists
    them). The router's output goes to ``output`` (default: this process's
    standard error; ``None`` drops it). With ``--external-envoy`` in
    ``args`` there is no front port: ``url`` becomes the registry API's.
    """

    def __init__(
        self,
        worker_urls: Sequence[str] = (),
        *,
        port: Optional[int] = None,
        host: str = "127.0.0.1",
        routing_algorithm: Optional[str] = None,
        admin_token: Optional[str] = None,
        args: Sequence[str] = (),
        binary: Optional[str] = None,
        env: Optional[Mapping[str, str]] = None,
        output: Union[IO[str], _Stderr, None] = STDERR,
        ready_timeout: float = 120.0,
        stop_timeout: float = 90.0,
        timeout: float = 60.0,
    ):
        if isinstance(worker_urls, str):
            raise TypeError("worker_urls is a list of URLs, not one string")
        if port is not None and not 0 < port < 65536:
            raise ValueError(f"port {port} is not a TCP port (None picks a free one)")
        self.host = host
        connect = _connect_host(host)
        self.port = port if port is not None else _free_port(connect.strip("[]"))
        super().__init__(f"http://{connect}:{self.port}", admin_token=admin_token, timeout=timeout)
        self.worker_urls = list(worker_urls)
        self.routing_algorithm = routing_algorithm
        self.args = list(args)
        self.binary = binary
        self.env = dict(env) if env is not None else None
        self.output = output
        self.ready_timeout = ready_timeout
        self.stop_timeout = stop_timeout
        self.api_url: Optional[str] = None
        self._proc: Optional["subprocess.Popen[str]"] = None
        self._tail: Deque[str] = collections.deque(maxlen=40)
        self._ready = threading.Event()
        self._pumps: List[threading.Thread] = []
        self._lock = threading.Lock()

    @property
    def pid(self) -> Optional[int]:
        """The router process's pid while it runs."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def command(self) -> List[str]:
        """The command line :meth:`start` runs."""
        cmd = [self.binary or binary_path(), "--host", self.host, "--port", str(self.port), "--stop-with-stdin"]
        if self.worker_urls:
            cmd += ["--worker-urls", *self.worker_urls]
        if self.routing_algorithm:
            cmd += ["--routing-algorithm", self.routing_algorithm]
        return cmd + self.args

    def start(self) -> "Router":
        """Start the router and wait until it serves."""
        with self._lock:
            if self._proc is not None:
                raise RuntimeError("this Router has already been started")
            cmd = self.command()
            env = router_env(cmd, os.environ if self.env is None else self.env)
            if self.admin_token:
                # In the environment, not on the command line, where any
                # user of the machine could read it (ps).
                env["DIFFUSION_ROUTER_ADMIN_TOKEN"] = self.admin_token
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                start_new_session=True,  # its own process group, stopped as one
                text=True,
                errors="replace",
            )
            atexit.register(self.stop)
            for stream, ready in ((self._proc.stdout, True), (self._proc.stderr, False)):
                t = threading.Thread(target=self._pump, args=(stream, ready), daemon=True,
                                     name=f"diffusion-router-{'stdout' if ready else 'stderr'}")
                t.start()
                self._pumps.append(t)
        deadline = time.monotonic() + self.ready_timeout
        while not self._ready.wait(0.1):
            code = self._proc.poll()
            if code is not None:
                for t in self._pumps:
                    t.join(timeout=2)
                self.stop()
                raise RouterStartError(f"the router exited with status {code} before it was ready", list(self._tail))
            if time.monotonic() > deadline:
                tail = list(self._tail)
                self.stop()
                raise RouterStartError(f"the router was not ready within {self.ready_timeout:g} s", tail)
        return self

    def stop(self, timeout: Optional[float] = None) -> None:
        """Stop the router as SIGTERM does (requests in flight finish, its
        Envoy and demo workers stop), then anything left in its process
        group. Harmless when it is not running."""
        with self._lock:
            proc = self._proc
            if proc is None:
                return
            atexit.unregister(self.stop)
            limit = self.stop_timeout if timeout is None else timeout
            if proc.poll() is None:
                try:
                    proc.send_signal(signal.SIGTERM)
                    proc.wait(timeout=limit)
                except subprocess.TimeoutExpired:
                    # Its Envoy and demo workers run in groups of their own,
                    # which the router would have stopped: stop them here.
                    for child in _children(proc.pid):
                        _kill_group(child)
                    _kill_group(proc.pid)
                    proc.wait()
            # Whatever the router started in its own group and left behind.
            _kill_group(proc.pid)
            if proc.stdin is not None:
                try:
                    proc.stdin.close()
                except OSError:
                    pass
            for t in self._pumps:
                t.join(timeout=5)
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()

    def __enter__(self) -> "Router":
        return self.start() if self._proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _pump(self, stream: Optional[IO[str]], watch_ready: bool) -> None:
        if stream is None:
            return
        for line in stream:
            line = line.rstrip("\n")
            self._tail.append(line)
            if watch_ready and not self._ready.is_set():
                m = _READY.match(line)
                if m:
                    self.api_url = m.group(2)
                    self._ready.set()
                alone = _READY_ALONE.match(line)
                if alone:  # --external-envoy: the API is what there is to call
                    self.api_url = self.url = "http://" + alone.group(1)
                    self._ready.set()
            out = sys.stderr if isinstance(self.output, _Stderr) else self.output
            if out is not None:
                try:
                    out.write(line + "\n")
                    out.flush()
                except (OSError, ValueError):  # closed by its owner
                    pass


def _children(pid: int) -> List[int]:
    """The pids whose parent is ``pid`` (Linux's /proc, as the wheel is)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name, in parentheses, may hold spaces: split after it.
        fields = stat[stat.rfind(")") + 2:].split()
        if len(fields) > 1 and fields[1] == str(pid):
            found.append(int(entry))
    return found


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
