"""``python -m semgrad_guard.service``: serve one model over HTTP with uvicorn (see docs/scaling.md)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from semgrad_guard.service.cli import add_arguments, run

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the serve options, then serve until interrupted."""
    parser = argparse.ArgumentParser(prog="python -m semgrad_guard.service", description=__doc__)
    return run(add_arguments(parser).parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
