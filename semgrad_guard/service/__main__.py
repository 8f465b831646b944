"""``python -m semgrad_guard.service``: the same as ``semgrad-guard serve`` (see docs/scaling.md)."""

from __future__ import annotations

import sys

from semgrad_guard.cli import main

if __name__ == "__main__":
    sys.exit(main(["serve", *sys.argv[1:]]))
