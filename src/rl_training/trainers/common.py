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


class EnvStepper:
    """Steps the session's environments for an off-policy trainer.

    Keeps the current observation as a tensor, counts environment steps, logs
    finished episodes, and hands back the real next observation of every
    transition: with same-step autoreset, a finished episode's last observation is
    in ``info["final_obs"]`` and the returned one already starts the next episode.
    """

    def __init__(self, session: Any) -> None:
        self._envs = session.envs
        self._device = session.device
        self._space = session.envs.single_observation_space
        self._episodes: EpisodeTracker = session.episodes
        raw, _ = self._envs.reset(seed=session.config.seed)
        self.obs = obs_to_tensor(raw, self._space, self._device)
        """The current observations, ``(num_envs, obs_size)`` on the device."""
        self.steps = 0
        """Environment steps so far, summed over environments."""
        self._num_envs: int = session.envs.num_envs

    @property
    def vector_steps(self) -> int:
        """Calls to ``step`` so far (environment steps per environment)."""
        return self.steps // self._num_envs

    def step(self, actions: np.ndarray) -> tuple[torch.Tensor, np.ndarray, np.ndarray, np.ndarray]:
        """Step every env; return ``(real next obs, reward, terminated, truncated)``."""
        raw, reward, terminated, truncated, infos = self._envs.step(actions)
        self.steps += len(reward)
        done = terminated | truncated
        self._episodes.update(reward, done, self.steps)
        if done.any():
            real_next = np.array(raw, copy=True)
            for i in np.flatnonzero(done):
                real_next[i] = infos["final_obs"][i]
            next_obs = obs_to_tensor(real_next, self._space, self._device)
            self.obs = obs_to_tensor(raw, self._space, self._device)
        else:
            next_obs = self.obs = obs_to_tensor(raw, self._space, self._device)
        return next_obs, reward, terminated, truncated


class PeriodicLog:
    """An off-policy trainer's ``time/sps`` and training row, every ``interval`` steps.

    Also after the last step, so a run's final values are always logged. The row's
    values may be device tensors: the logger copies them to the host in one transfer.
    """

    def __init__(self, session: Any, interval: int) -> None:
        self._session = session
        self._interval = interval
        self._next = interval

    def __call__(self, steps: int, values: Mapping[str, Any]) -> None:
        """Log ``values`` and ``time/sps`` if ``steps`` reached the next row or the end."""
        if steps < self._next and steps < self._session.config.total_timesteps:
            return
        while self._next <= steps:
            self._next += self._interval
        metrics = {**values, "time/sps": self._session.timer.sps(steps)}
        self._session.logger.log_metrics(metrics, steps)


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


class EnsembleMLP(nn.Module):
    """``n`` independent MLPs on one input, run together with batched matmuls.

    The twin critics of SAC and TD3: one ``baddbmm`` per layer for both instead of
    one ``linear`` each, which halves the kernel launches and lets a matmul use
    both cores. Each member is initialised like ``nn.Linear`` (uniform in
    ``+-1/sqrt(fan_in)``) and has its own weights.
    """

    def __init__(
        self,
        n: int,
        in_dim: int,
        hidden: Sequence[int],
        out_dim: int,
        *,
        activation: Callable[[torch.Tensor], torch.Tensor] = torch.relu,
    ) -> None:
        super().__init__()
        widths = [in_dim, *hidden, out_dim]
        self.n = n
        #: Per layer: weights ``(n, in, out)`` and biases ``(n, 1, out)``.
        self.weights = [
            nn.Parameter(torch.empty(n, a, b)) for a, b in zip(widths, widths[1:], strict=False)
        ]
        self.biases = [nn.Parameter(torch.empty(n, 1, b)) for b in widths[1:]]
        self._params = nn.ParameterList([*self.weights, *self.biases])
        for w, b in zip(self.weights, self.biases, strict=True):
            bound = 1.0 / math.sqrt(w.shape[1])
            nn.init.uniform_(w, -bound, bound)
            nn.init.uniform_(b, -bound, bound)
        self.activation = activation

    def forward(self, x: torch.Tensor, *, detach: bool = False) -> torch.Tensor:
        """Every member's output, shape ``(n, batch, out)``.

        ``detach=True`` uses the weights without tracking them, for a loss that must
        move only the input (the actor's loss through the critics).
        """
        h = x.unsqueeze(0).expand(self.n, *x.shape)
        last = len(self.weights) - 1
        for i, (weight, bias) in enumerate(zip(self.weights, self.biases, strict=True)):
            w, b = (weight.detach(), bias.detach()) if detach else (weight, bias)
            h = torch.baddbmm(b, h, w)
            if i < last:
                h = self.activation(h)
        return h

    def member(self, x: torch.Tensor, index: int, *, detach: bool = False) -> torch.Tensor:
        """Member ``index`` alone, ``(batch, out)``: no work spent on the others."""
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            w_i, b_i = w[index], b[index, 0]
            if detach:
                w_i, b_i = w_i.detach(), b_i.detach()
            x = torch.addmm(b_i, x, w_i)
            if i < last:
                x = self.activation(x)
        return x


def flatten_parameters(modules: Sequence[nn.Module], *, with_grad: bool = True) -> nn.Parameter:
    """Move every parameter of ``modules`` into one contiguous tensor; return it.

    Each parameter's ``.data`` (and, ``with_grad``, its ``.grad``) becomes a view into
    the flat tensor (the layout of DDP's ``gradient_as_bucket_view``), so zeroing,
    clipping, an optimizer step or a Polyak update is one operation for the whole
    network instead of one per parameter tensor. Autograd accumulates into the
    existing ``.grad`` views: zero them in place, never set them to ``None``.

    Call it after the modules are on their device: moving them would break the views.
    """
    params = [p for module in modules for p in module.parameters()]
    flat = nn.Parameter(torch.cat([p.detach().reshape(-1) for p in params]))
    if with_grad:
        flat.grad = torch.zeros_like(flat)
    offset = 0
    for p in params:
        n = p.numel()
        p.data = flat.data[offset : offset + n].view_as(p)
        if with_grad:
            assert flat.grad is not None
            p.grad = flat.grad[offset : offset + n].view_as(p)
        offset += n
    return flat


class FlatOptimizer:
    """An optimizer over :func:`flatten_parameters` of some modules.

    Args:
        modules: Whose parameters it owns.
        optimizer: ``torch.optim`` class, e.g. ``torch.optim.Adam`` (fused where available).
        **kwargs: The optimizer's arguments (``lr``, ``eps``...).
    """

    def __init__(
        self, modules: Sequence[nn.Module], optimizer: type[torch.optim.Optimizer], **kwargs: Any
    ) -> None:
        self.param = flatten_parameters(modules)
        """All the parameters, flat; ``.grad`` is the flat gradient."""
        if optimizer is torch.optim.Adam and self.param.device.type in ("cpu", "cuda"):
            kwargs.setdefault("fused", True)
        self.optimizer = optimizer([self.param], **kwargs)

    def set_lr(self, lr: float) -> None:
        """Set the learning rate."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def step(self, loss: torch.Tensor, max_grad_norm: float | None = None) -> None:
        """Zero the gradients, backpropagate ``loss``, clip the global norm, step."""
        grad = self.param.grad
        assert grad is not None  # set by flatten_parameters and never released
        grad.zero_()
        loss.backward()  # type: ignore[no-untyped-call]
        if max_grad_norm is not None:
            norm = torch.linalg.vector_norm(grad)
            grad.mul_(torch.clamp(max_grad_norm / (norm + 1e-6), max=1.0))
        self.optimizer.step()


def box_space(space: gym.Space[Any]) -> gym.spaces.Box:
    """``space`` as a Box (the continuous-action trainers' only kind).

    Raises:
        ValueError: it is not a Box.
    """
    if not isinstance(space, gym.spaces.Box):
        raise ValueError(f"action space {space} is not a Box")
    return space


def discrete_space(space: gym.Space[Any]) -> gym.spaces.Discrete:
    """``space`` as a Discrete space (DQN's only kind).

    Raises:
        ValueError: it is not Discrete.
    """
    if not isinstance(space, gym.spaces.Discrete):
        raise ValueError(f"action space {space} is not Discrete")
    return space


def scale_action(action: torch.Tensor, space: gym.spaces.Box) -> np.ndarray:
    """Actions in ``[-1, 1]`` (how SAC and TD3 learn them) mapped onto the Box bounds."""
    unit: np.ndarray = action.cpu().numpy()
    scaled: np.ndarray = space.low + 0.5 * (unit + 1.0) * (space.high - space.low)
    return scaled


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


def soft_update(target: torch.Tensor, source: torch.Tensor, tau: float) -> None:
    """Polyak averaging ``target <- tau * source + (1 - tau) * target`` of flat parameters.

    Both are :func:`flatten_parameters` results, so the whole network is one op.
    """
    with torch.no_grad():
        if tau == 1.0:
            target.copy_(source)
        else:
            target.lerp_(source, tau)


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
