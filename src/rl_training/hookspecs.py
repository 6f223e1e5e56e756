"""The plugin hooks of rl-training and their pluggy markers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from rl_training.experiment.logging import SinkFactory

PROJECT_NAME = "rl_training"
"""pluggy project name, and the entry-point group third-party plugins declare."""

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def rl_training_log_sinks() -> Mapping[str, SinkFactory]:  # type: ignore[empty-body]
    """Offer log sinks by name.

    Called once each time the installed sinks are discovered (when a run is
    created, and by ``rl-train --list-sinks``).

    Returns:
        Sink name (as typed after ``--log-sinks``) -> ``factory(run_context) -> Sink``.
        Names must be unique across all installed plugins, built-ins included: a
        name offered twice is reported with both providers and refused when asked for.
    """
