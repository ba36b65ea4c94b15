"""The ``posttrain`` console script: the allocator first (``allocator.preload`` may re-exec this very command line
with tcmalloc preloaded), then the command itself (``cli.main``). Kept apart from ``cli`` because importing the
command table loads torch (about 2 s), which a re-exec would pay twice."""

from __future__ import annotations

import sys


def main() -> None:
    from posttrain.allocator import AllocatorError, preload

    try:
        preload()
    except AllocatorError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    from posttrain.cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
