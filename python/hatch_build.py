"""Hatchling build hook: puts the compiled binaries in the wheel and tags it
for their platform. scripts/build-wheel.sh compiles them into a staging
directory per platform and names it and the tag in the environment."""

from __future__ import annotations

import os
from pathlib import Path

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

FILES = ("diffusion-router", "fake-worker", "diffusion-tagger.wasm")


class CustomBuildHook(BuildHookInterface):
    def initialize(self, version, build_data):
        if self.target_name != "wheel":
            return
        staged = os.environ.get("DIFFUSION_ROUTER_WHEEL_BIN")
        platform = os.environ.get("DIFFUSION_ROUTER_WHEEL_PLATFORM")
        if not staged or not platform:
            raise RuntimeError(
                "the diffusion-router wheel carries compiled binaries: build it with `make wheel`"
            )
        missing = [f for f in FILES if not (Path(staged) / f).is_file()]
        if missing:
            raise RuntimeError(f"{staged} lacks {', '.join(missing)}: run `make wheel`")
        build_data["pure_python"] = False
        build_data["tag"] = f"py3-none-{platform}"
        for f in FILES:
            build_data["force_include"][str(Path(staged) / f)] = f"diffusion_router/_bin/{f}"
