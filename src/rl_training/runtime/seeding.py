"""Seed every source of randomness a run uses."""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int, device: torch.device) -> torch.Generator:
    """Seed Python, numpy and torch; return a generator on ``device`` for action sampling.

    Trainers draw their own randomness (action sampling, minibatch order, noise) from
    the returned generator, so two runs with one seed on the CPU log identical values.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator


def resume_seed(seed: int, step: int) -> int:
    """The seed environments restart with when a run resumes at ``step``: the same for
    the same run and step, different from the run's first reset and other steps."""
    state = np.random.SeedSequence([seed, step]).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 32 | int(state[1])
