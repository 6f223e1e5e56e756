"""What every trainer shares, written once: envs, episode statistics, timing, networks, model file.

Glossary: ``obs`` observation, ``n_envs`` parallel environments, ``sps`` environment
steps per second.
"""

from __future__ import annotations

import collections
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from rl_training.experiment.logging import Logger

EPISODE_WINDOW = 20
"""Finished episodes over which ``mean_return`` is taken (the contract's "last 20")."""


# -- environments ------------------------------------------------------------------------


def make_vec_env(env_id: str, num_envs: int, seed: int) -> gym.vector.SyncVectorEnv:
    """``num_envs`` copies of ``env_id`` in one process, seeded ``seed, seed+1, ...``.

    Same-step autoreset: when a sub-env's episode ends, the returned observation is
    already the next episode's first, and the last one is in ``info["final_obs"]``,
    so truncated episodes can still be bootstrapped from it.
    """
    envs = gym.vector.SyncVectorEnv(
        [lambda: gym.make(env_id) for _ in range(num_envs)],
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
    )
    envs.action_space.seed(seed)
    envs.single_action_space.seed(seed)
    return envs


def final_observations(infos: Mapping[str, Any], mask: np.ndarray) -> np.ndarray:
    """The last observations of the sub-envs in ``mask`` whose episodes just ended."""
    return np.stack([infos["final_obs"][i] for i in np.flatnonzero(mask)])


class EpisodeTracker:
    """Sums rewards per sub-env and logs ``episode/return`` and ``episode/length``.

    Each finished episode is one ``log_metrics`` call at the global step it ended.
    """

    def __init__(self, num_envs: int, logger: Logger) -> None:
        self._returns = np.zeros(num_envs, dtype=np.float64)
        self._lengths = np.zeros(num_envs, dtype=np.int64)
        self._logger = logger
        #: The last :data:`EPISODE_WINDOW` returns, oldest first.
        self.recent: collections.deque[float] = collections.deque(maxlen=EPISODE_WINDOW)
        #: Finished episodes so far.
        self.count = 0

    def update(self, rewards: np.ndarray, dones: np.ndarray, step: int) -> None:
        """Add one vector step's rewards; log every episode that ``dones`` ends."""
        self._returns += rewards
        self._lengths += 1
        if dones.any():
            for i in np.flatnonzero(dones):
                episode_return = float(self._returns[i])
                self._logger.log_metrics(
                    {"episode/return": episode_return, "episode/length": int(self._lengths[i])},
                    step,
                )
                self.recent.append(episode_return)
                self.count += 1
            self._returns[dones] = 0.0
            self._lengths[dones] = 0

    @property
    def mean_return(self) -> float:
        """Mean of the last :data:`EPISODE_WINDOW` returns (NaN before any episode ends)."""
        return float(np.mean(self.recent)) if self.recent else math.nan


class SpsTimer:
    """Environment steps per second since the start, for ``time/sps``."""

    def __init__(self) -> None:
        self._start = time.perf_counter()

    def sps(self, steps: int) -> float:
        """Steps per second over the whole run so far."""
        return steps / max(time.perf_counter() - self._start, 1e-9)

    @property
    def elapsed(self) -> float:
        """Seconds since the start."""
        return time.perf_counter() - self._start


def rollout_lengths(total_timesteps: int, num_envs: int, n_steps: int) -> Iterator[int]:
    """Per-env lengths of successive rollouts: ``n_steps`` each, the last cut short so the
    run stops within ``num_envs - 1`` steps of ``total_timesteps``."""
    per_env = -(-total_timesteps // num_envs)  # ceil
    while per_env > 0:
        length = min(n_steps, per_env)
        yield length
        per_env -= length


# -- networks ----------------------------------------------------------------------------


def layer_init(layer: nn.Linear, gain: float = math.sqrt(2), bias: float = 0.0) -> nn.Linear:
    """Orthogonal weights with ``gain`` and constant bias, as in SB3 and CleanRL."""
    nn.init.orthogonal_(layer.weight, gain)
    nn.init.constant_(layer.bias, bias)
    return layer


class MLP(nn.Module):
    """``Linear -> activation`` per hidden width, then a linear head.

    ``forward`` calls ``torch.nn.functional.linear`` on the layers' own parameters
    rather than each submodule: with layers this small, per-module dispatch costs
    as much as the arithmetic. The parameters and ``state_dict`` are those of an
    ``nn.Sequential`` of ``nn.Linear`` layers.
    """

    def __init__(
        self,
        in_dim: int,
        hidden: Sequence[int],
        out_dim: int,
        *,
        activation: Callable[[torch.Tensor], torch.Tensor] = torch.tanh,
        out_gain: float | None = 1.0,
    ) -> None:
        super().__init__()
        widths = [in_dim, *hidden, out_dim]
        #: The linear layers, input first (the same modules as ``layers``, typed).
        self.linears = [nn.Linear(a, b) for a, b in zip(widths, widths[1:], strict=False)]
        self.layers = nn.ModuleList(self.linears)
        if out_gain is not None:  # orthogonal everywhere; else PyTorch's default init
            for layer in self.linears[:-1]:
                layer_init(layer)
            layer_init(self.linears[-1], out_gain)
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        linear, activation = nn.functional.linear, self.activation
        *hidden, head = self.linears
        for layer in hidden:
            x = activation(linear(x, layer.weight, layer.bias))
        return linear(x, head.weight, head.bias)


def mlp(
    in_dim: int,
    hidden: Sequence[int],
    out_dim: int,
    *,
    activation: Callable[[torch.Tensor], torch.Tensor] = torch.tanh,
    out_gain: float | None = 1.0,
) -> MLP:
    """An :class:`MLP`: Tanh and orthogonal init by default (on-policy trainers);
    ``out_gain=None`` keeps PyTorch's default init (the off-policy trainers' choice)."""
    return MLP(in_dim, hidden, out_dim, activation=activation, out_gain=out_gain)


class FlatOptimizer:
    """An optimizer over one contiguous buffer holding all of some modules' parameters.

    Every parameter's ``.data`` and ``.grad`` become views into one flat tensor each
    (the layout DDP's ``gradient_as_bucket_view`` uses), so zeroing, gradient-norm
    clipping and the Adam/RMSprop step are one operation each instead of one per
    parameter tensor. Autograd accumulates into the existing ``.grad`` views, so
    gradients must be zeroed with :meth:`zero_grad`, never set to ``None``.

    Build it after the modules are on their device: moving them would break the views.

    Args:
        modules: Whose parameters to own.
        optimizer: ``torch.optim`` class, e.g. ``torch.optim.Adam``.
        **kwargs: The optimizer's arguments (``lr``, ``eps``...).
    """

    def __init__(
        self, modules: Sequence[nn.Module], optimizer: type[torch.optim.Optimizer], **kwargs: Any
    ) -> None:
        params = [p for module in modules for p in module.parameters()]
        flat = torch.cat([p.detach().reshape(-1) for p in params])
        self.param = nn.Parameter(flat)
        self.param.grad = torch.zeros_like(flat)
        offset = 0
        for p in params:
            n = p.numel()
            p.data = self.param.data[offset : offset + n].view_as(p)
            p.grad = self.param.grad[offset : offset + n].view_as(p)
            offset += n
        if optimizer is torch.optim.Adam and self.param.device.type in ("cpu", "cuda"):
            kwargs.setdefault("fused", True)
        self.optimizer = optimizer([self.param], **kwargs)

    def set_lr(self, lr: float) -> None:
        """Set the learning rate."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def step(self, loss: torch.Tensor, max_grad_norm: float | None = None) -> torch.Tensor | None:
        """Zero the gradients, backpropagate ``loss``, clip the global norm, step.

        Returns:
            The gradient norm before clipping, when clipping (a device tensor: no sync).
        """
        grad = self.param.grad
        assert grad is not None  # set in __init__ and never released
        grad.zero_()
        loss.backward()  # type: ignore[no-untyped-call]
        norm = None
        if max_grad_norm is not None:
            norm = torch.linalg.vector_norm(grad)
            grad.mul_(torch.clamp(max_grad_norm / (norm + 1e-6), max=1.0))
        self.optimizer.step()
        return norm


def obs_dim(space: gym.Space[Any]) -> int:
    """Flat size of a Box or Discrete observation space.

    Raises:
        ValueError: any other space.
    """
    if isinstance(space, gym.spaces.Box):
        return int(np.prod(space.shape))
    if isinstance(space, gym.spaces.Discrete):
        return int(space.n)
    raise ValueError(f"observation space {space} is not supported (Box or Discrete)")


def obs_to_tensor(obs: np.ndarray, space: gym.Space[Any], device: torch.device) -> torch.Tensor:
    """A float32 batch on ``device``: Box flattened, Discrete one-hot."""
    if isinstance(space, gym.spaces.Discrete):
        index = torch.as_tensor(np.asarray(obs) - space.start, device=device, dtype=torch.long)
        return nn.functional.one_hot(index, int(space.n)).to(torch.float32)
    array = np.asarray(obs, dtype=np.float32)
    if array.ndim != 2:
        array = array.reshape(array.shape[0], -1)
    return torch.from_numpy(array).to(device, non_blocking=True)


def explained_variance(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``1 - Var[target - predicted] / Var[target]`` (NaN when the target is constant)."""
    var_target = target.var()
    return 1 - (target - predicted).var() / var_target


def linear_schedule(start: float, end: float, fraction: float) -> float:
    """``start`` moving linearly to ``end`` as ``fraction`` goes 0 -> 1 (clamped)."""
    return start + (end - start) * min(max(fraction, 0.0), 1.0)


def soft_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    """Polyak averaging ``target <- tau * source + (1 - tau) * target`` in one fused op."""
    with torch.no_grad():
        target_params: list[torch.Tensor] = list(target.parameters())
        source_params: list[torch.Tensor] = list(source.parameters())
        if tau == 1.0:
            torch._foreach_copy_(target_params, source_params)
        else:
            torch._foreach_lerp_(target_params, source_params, tau)


# -- model file --------------------------------------------------------------------------

MODEL_FORMAT = 1
"""Version of the ``model.pt`` layout written by :func:`save_model`."""


@dataclass(frozen=True)
class SavedModel:
    """What :func:`load_model` reads back."""

    algo: str
    env_id: str
    hyperparams: dict[str, Any]
    state_dicts: dict[str, dict[str, torch.Tensor]]


def save_model(
    path: Path, *, algo: str, env_id: str, hyperparams: Any, modules: Mapping[str, nn.Module]
) -> None:
    """Write the modules' weights (moved to the CPU) and what is needed to rebuild them."""
    payload = {
        "format": MODEL_FORMAT,
        "algo": algo,
        "env_id": env_id,
        "hyperparams": {
            k: list(v) if isinstance(v, tuple) else v for k, v in asdict(hyperparams).items()
        },
        "state_dicts": {
            name: {k: v.detach().cpu() for k, v in module.state_dict().items()}
            for name, module in modules.items()
        },
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def load_model(path: Path) -> SavedModel:
    """Read a ``model.pt`` written by :func:`save_model` (weights only: no code runs).

    Raises:
        FileNotFoundError: no model at ``path``.
        ValueError: not a model file of this package.
    """
    if not path.is_file():
        raise FileNotFoundError(f"no saved model at {path}")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != MODEL_FORMAT:
        raise ValueError(f"{path} is not an rl-training model file (format {MODEL_FORMAT})")
    return SavedModel(
        algo=payload["algo"],
        env_id=payload["env_id"],
        hyperparams=payload["hyperparams"],
        state_dicts=payload["state_dicts"],
    )
