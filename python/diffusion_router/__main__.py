"""``python -m diffusion_router`` and the ``diffusion-router`` command: the
router binary with this command line, in this process (exec), so signals
and the exit status are the binary's own."""

from __future__ import annotations

import os
import sys

from ._binary import binary_path, router_env


def main() -> None:
    path = binary_path()
    args = sys.argv[1:]
    os.execve(path, [path, *args], router_env(args, os.environ))


if __name__ == "__main__":
    main()
