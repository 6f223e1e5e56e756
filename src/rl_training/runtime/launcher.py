"""``rl-train --nproc-per-node N``: N ranks on this machine, with clean exits.

The ranks are started by torch's elastic launcher (``elastic_launch``, the engine
``torchrun`` runs) as ``python -m rl_training ...`` with the same arguments, under a
``c10d`` rendezvous on a free local port, as ``torchrun --standalone`` does. What
differs from ``torchrun`` is the end: the launcher's own logs and tracebacks are
silenced, and its outcome becomes ``rl-train``'s exit status, with the one line the
ranks print (rank 0 speaks for the run).
"""

from __future__ import annotations

import logging
import signal
import sys
import uuid
from collections.abc import Sequence
from typing import TextIO

from rl_training.errors import ConfigError

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


def launch_ranks(nproc: int, argv: Sequence[str], *, stderr: TextIO | None = None) -> int:
    """Run ``python -m rl_training *argv`` as ``nproc`` ranks; their exit status.

    0 when every rank finished, 2 when rank 0 refused the input, 130 / 143 when the
    launcher got SIGINT / SIGTERM (each rank got it once, checkpointed and closed its
    run ``"interrupted"``), 1 when a rank failed (rank 0 has said why; a rank that
    failed alone is named here).

    Raises:
        ValueError: ``nproc`` is below 1.
    """
    if nproc < 1:
        raise ConfigError(f"--nproc-per-node: {nproc} is not a positive number of processes")
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    for name in list(logging.root.manager.loggerDict):  # the ranks speak, not the agent
        if name.startswith(("torch.distributed.elastic", "torch.distributed.launcher")):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=uuid.uuid4().hex,
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",
        max_restarts=0,
        signals_to_handle="SIGTERM,SIGINT",
    )
    out = stderr if stderr is not None else sys.stderr
    try:
        elastic_launch(config, entrypoint=sys.executable)("-m", "rl_training", *argv)
    except SignalException as stop:
        return 128 + int(stop.sigval)
    except ChildFailedError as error:
        codes = {rank: failure.exitcode for rank, failure in error.failures.items()}
        if EXIT_BAD_INPUT in codes.values():
            return EXIT_BAD_INPUT  # every rank checks the input alike; rank 0 said why
        if set(codes.values()) <= {128 + signal.SIGINT, 128 + signal.SIGTERM}:
            return max(codes.values())
        if 0 not in codes:
            rank, code = min(codes.items())
            print(f"rl-train: error: rank {rank} of {nproc} failed (exit code {code})", file=out)
        return EXIT_FAILED
    return EXIT_OK
