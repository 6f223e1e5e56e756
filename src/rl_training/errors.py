"""The errors a user acts on: bad input, and training that diverged."""

from __future__ import annotations


class ConfigError(ValueError):
    """Bad input: the message names the bad value and what is accepted.

    Raised before a run writes anything (by ``TrainConfig``, the sink and device
    checks, the env and action-space checks), so catching it means nothing was left
    behind. A ``ValueError``, as the contract promises.
    """


class NonFiniteError(RuntimeError):
    """Training produced a NaN or infinite loss or network weight.

    The run ends ``"failed"``; its message names the quantity and the step, and
    ``checkpoint.pt``, ``best_model.pt`` and ``model.pt`` keep the last finite weights
    (none of them is written from non-finite ones).
    """


class EnvError(RuntimeError):
    """The environment failed: it raised in ``make``, ``reset`` or ``step``, or returned
    an observation that does not fit its observation space. The message names the
    env, the call, the step and what went wrong; the run ends ``"failed"``."""
