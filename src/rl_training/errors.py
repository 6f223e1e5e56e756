"""The error raised for bad input."""

from __future__ import annotations


class ConfigError(ValueError):
    """Bad input: the message names the bad value and what is accepted.

    Raised before a run writes anything (by ``TrainConfig``, the sink and device
    checks, the env and action-space checks), so catching it means nothing was left
    behind. A ``ValueError``, as the contract promises.
    """
