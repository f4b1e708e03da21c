"""Where the wheel keeps its binaries."""

from __future__ import annotations

import os
from pathlib import Path

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
