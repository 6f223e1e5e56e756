"""``python -m rl_training`` and ``rl-train``: the command line, safe to interrupt at once.

Importing the CLI takes a moment (numpy, pluggy, then torch for training); a Ctrl-C
in that moment, or anywhere outside a run (which handles its own), is the clean
interrupt: one line and exit 130, not a traceback.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Collection, MutableMapping

EXIT_SIGINT = 130
GOMP_SPINCOUNT = "1000"
"""How long torch's OpenMP threads (libgomp) spin for work before they sleep, in
``rl-train`` (libgomp's own default: 300,000). Measured on 2 cores, whole runs in
seconds (DQN CartPole 20k steps, SAC Pendulum 1.5k): alone, 15.1/12.2 and 12.5/9.9 at
1000 against 15.4/11.4 and 11.7/10.5 by default; beside one busy process, 23.8 and
20.1 against 54.8 and 45.7 (``OMP_WAIT_POLICY=PASSIVE``: 16.1 and 18.2 busy, but
22.0/19.8 and 19.1/14.8 alone)."""


def steady_openmp(environ: MutableMapping[str, str], loaded: Collection[str]) -> bool:
    """Set ``GOMP_SPINCOUNT`` to :data:`GOMP_SPINCOUNT` in ``environ`` unless the user
    chose a spin count or wait policy, or torch is already among the ``loaded`` modules
    (libgomp reads it once, when torch loads it). Whether it was set.

    Spinning threads are what make small parallel regions fast on free cores, and what
    makes them fight any other busy process for a core (a DQN run 3.6x slower).
    """
    if "torch" in loaded or "GOMP_SPINCOUNT" in environ or "OMP_WAIT_POLICY" in environ:
        return False
    environ["GOMP_SPINCOUNT"] = GOMP_SPINCOUNT
    return True


def run() -> int:
    """Import the CLI and run it; the exit status."""
    steady_openmp(os.environ, sys.modules)
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
