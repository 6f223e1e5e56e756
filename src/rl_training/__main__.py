"""``python -m rl_training`` and ``rl-train``: the command line, safe to interrupt at once.

Importing the CLI takes a moment (numpy, pluggy, then torch for training); a Ctrl-C
in that moment, or anywhere outside a run (which handles its own), is the clean
interrupt: one line and exit 130, not a traceback.
"""

from __future__ import annotations

import os
import sys

EXIT_SIGINT = 130


def run() -> int:
    """Import the CLI and run it; the exit status."""
    try:
        from rl_training.cli import main

        return main()
    except KeyboardInterrupt:
        # No run is open here (a run handles its own interrupt). Exit at once: a Ctrl-C
        # that lands in an extension's import can otherwise leave the interpreter
        # ending by SIGINT itself, with a traceback and no exit status of ours.
        print("rl-train: interrupted", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(EXIT_SIGINT)


if __name__ == "__main__":
    raise SystemExit(run())
