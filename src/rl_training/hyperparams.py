"""Hyperparameters of every algorithm, one frozen dataclass each.

They live here rather than beside each trainer so that :class:`~rl_training.TrainConfig`
can validate ``hyperparams`` overrides (and ``rl-train --hp``) without importing torch;
:mod:`rl_training.registry` names each algorithm's class. Names follow
Stable-Baselines3 wherever it has one, plus ``num_envs``.
"""

from __future__ import annotations

import dataclasses
import math
import textwrap
import types
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias, TypeVar, Union, get_args, get_origin, get_type_hints

from rl_training.errors import ConfigError


def _positive(name: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(f"hyperparams[{name!r}] must be > 0, got {value!r}")


def _non_negative(name: str, value: float) -> None:
    if not value >= 0:
        raise ConfigError(f"hyperparams[{name!r}] must be >= 0, got {value!r}")


def _unit_interval(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"hyperparams[{name!r}] must be in [0, 1], got {value!r}")


PRECISIONS = ("fp32", "bf16")
"""The accepted values of ``precision``."""


@dataclass(frozen=True, kw_only=True)
class _Common:
    """Fields every algorithm has."""

    num_envs: int = 1
    """Number of parallel environments (``gymnasium.vector.SyncVectorEnv``)."""
    learning_rate: float = 3e-4
    """Adam step size."""
    gamma: float = 0.99
    """Discount factor."""
    net_arch: tuple[int, ...] = (64, 64)
    """Hidden layer sizes of every network (Tanh on-policy, ReLU off-policy); ``[]``:
    the heads read the observation (or the CNN's features) directly, as SB3's
    ``CnnPolicy`` on Atari."""
    normalize_obs: bool = False
    """Normalise vector observations by their running mean and variance, clipped to
    +-10 (SB3's ``VecNormalize``); the statistics are saved with the model."""
    normalize_reward: bool = False
    """Divide rewards by the running standard deviation of the discounted return,
    clipped to +-10 (``episode/return`` stays the env's own)."""
    precision: str = "fp32"
    """Matmul precision in training: ``"fp32"``, or ``"bf16"`` (bfloat16 matmuls and
    convolutions on fp32 master weights: about 1.5-2x the throughput on CPUs with
    AVX512-BF16 or AMX; heads, losses and optimiser state stay fp32; evaluation runs
    fp32). DQN, SAC, TD3: the hidden layers and the Nature CNN; PPO, A2C: the Nature
    CNN of image observations (their small MLPs stay fp32)."""

    def __post_init__(self) -> None:
        _check_types(self)
        _positive("num_envs", self.num_envs)
        if self.precision not in PRECISIONS:
            raise ConfigError(
                f"hyperparams['precision'] must be one of "
                f"{', '.join(map(repr, PRECISIONS))}, got {self.precision!r}"
            )
        _positive("learning_rate", self.learning_rate)
        _unit_interval("gamma", self.gamma)
        if any(width <= 0 for width in self.net_arch):
            raise ConfigError(
                f"hyperparams['net_arch'] must be a list of positive layer "
                f"widths, got {list(self.net_arch)!r}"
            )


@dataclass(frozen=True, kw_only=True)
class _OnPolicy(_Common):
    """Fields the rollout algorithms (PPO, A2C) share."""

    log_std_init: float = 0.0
    """Initial log standard deviation of a Box action's Gaussian policy."""
    activation: str = "tanh"
    """The MLPs' hidden activation: ``"tanh"`` (SB3's default) or ``"relu"``."""
    ortho_init: bool = True
    """Orthogonal initialisation (SB3's ``ortho_init``; policy head gain 0.01, value
    head 1); ``False``: PyTorch's default initialisation."""
    anneal_lr: bool = False
    """Linearly decay the learning rate to 0 over ``total_timesteps``."""
    n_steps: int = 128
    """Steps collected per environment between updates."""
    gae_lambda: float = 0.95
    """GAE lambda (Schulman et al. 2016, arXiv:1506.02438)."""
    normalize_advantage: bool = True
    """Normalise advantages (per minibatch)."""
    ent_coef: float = 0.0
    """Entropy bonus coefficient."""
    vf_coef: float = 0.5
    """Value loss coefficient."""
    max_grad_norm: float = 0.5
    """Global gradient-norm clip."""
    log_interval: int = 1
    """Environment steps between rows of ``loss/``, ``train/`` and ``time/sps``: a row
    follows the first update at or past each multiple (1: every update), and the last."""

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("n_steps", "max_grad_norm", "log_interval"):
            _positive(name, getattr(self, name))
        for name in ("ent_coef", "vf_coef"):
            _non_negative(name, getattr(self, name))
        _unit_interval("gae_lambda", self.gae_lambda)
        if self.activation not in ("tanh", "relu"):
            raise ConfigError(
                f"hyperparams['activation'] must be 'tanh' or 'relu', got {self.activation!r}"
            )


@dataclass(frozen=True, kw_only=True)
class PPOHyperparams(_OnPolicy):
    """Proximal Policy Optimization (Schulman et al. 2017, arXiv:1707.06347)."""

    num_envs: int = 4
    """Number of parallel environments."""
    learning_rate: float = 1e-3
    """Adam step size (annealed linearly to 0 when ``anneal_lr``)."""
    anneal_lr: bool = True
    """Linearly decay the learning rate to 0 over ``total_timesteps``."""
    batch_size: int = 128
    """Minibatch size of each gradient step."""
    n_epochs: int = 10
    """Passes over the rollout per update."""
    clip_range: float = 0.2
    """Surrogate clipping range epsilon (PPO paper, eq. 7)."""
    anneal_clip_range: bool = False
    """Linearly decay the clipping range to 0 over ``total_timesteps``, as the learning
    rate (the PPO paper's Atari setting; rl-zoo's ``lin_0.1``)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("batch_size", "n_epochs", "clip_range"):
            _positive(name, getattr(self, name))


@dataclass(frozen=True, kw_only=True)
class A2CHyperparams(_OnPolicy):
    """Advantage Actor-Critic, synchronous A3C (Mnih et al. 2016, arXiv:1602.01783)."""

    num_envs: int = 8
    """Number of parallel environments."""
    learning_rate: float = 7e-4
    """RMSprop step size (annealed linearly to 0 when ``anneal_lr``)."""
    n_steps: int = 5
    """Steps collected per environment between updates (the n of n-step returns)."""
    gae_lambda: float = 1.0
    """GAE lambda; 1.0 gives plain n-step advantages."""
    normalize_advantage: bool = False
    """Normalise advantages per update."""
    log_interval: int = 4_000
    """Environment steps between rows of ``loss/``, ``train/`` and ``time/sps``: a row
    follows the first update at or past each multiple, and the last (4,000 = every
    100 updates with the default 8 envs x 5 steps, SB3's cadence)."""
    rms_prop_eps: float = 1e-5
    """RMSprop epsilon (SB3's default, after the original A2C)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        _positive("rms_prop_eps", self.rms_prop_eps)


@dataclass(frozen=True, kw_only=True)
class _OffPolicy(_Common):
    """Fields the replay-buffer algorithms (DQN, SAC, TD3) share."""

    buffer_size: int = 1_000_000
    """Replay buffer capacity (transitions)."""
    learning_starts: int = 100
    """Environment steps of random actions before the first gradient step."""
    batch_size: int = 256
    """Minibatch size."""
    train_freq: int = 1
    """Vector-environment steps between training phases."""
    gradient_steps: int = 1
    """Gradient steps per training phase."""
    tau: float = 0.005
    """Polyak averaging coefficient of the target networks (1.0 = hard copy)."""
    log_interval: int = 1_000
    """Environment steps between rows of ``loss/``, ``train/`` and ``time/sps`` (and at the end)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("buffer_size", "batch_size", "train_freq", "log_interval"):
            _positive(name, getattr(self, name))
        for name in ("learning_starts", "gradient_steps"):
            _non_negative(name, getattr(self, name))
        _unit_interval("tau", self.tau)

    def trains_after(self, steps: int, vector_steps: int) -> bool:
        """Whether a training phase follows the vector step that brought the run to
        ``steps`` environment steps: once ``learning_starts`` transitions are stored,
        every ``train_freq`` vector steps. The one rule of every off-policy trainer."""
        return steps >= self.learning_starts and vector_steps % self.train_freq == 0


@dataclass(frozen=True, kw_only=True)
class DQNHyperparams(_OffPolicy):
    """Deep Q-Network (Mnih et al. 2015, doi:10.1038/nature14236); defaults: rl-zoo CartPole."""

    learning_rate: float = 2.3e-3
    """Adam step size."""
    net_arch: tuple[int, ...] = (256, 256)
    """Hidden layer sizes of the Q-network."""
    buffer_size: int = 100_000
    """Replay buffer capacity (transitions)."""
    learning_starts: int = 1_000
    """Environment steps before the first gradient step."""
    batch_size: int = 64
    """Minibatch size."""
    train_freq: int = 256
    """Vector-environment steps between training phases."""
    gradient_steps: int = 128
    """Gradient steps per training phase."""
    tau: float = 1.0
    """Target update coefficient (1.0 = hard copy)."""
    target_update_interval: int = 10
    """Environment steps between target-network updates."""
    exploration_fraction: float = 0.16
    """Fraction of training over which epsilon decays."""
    exploration_initial_eps: float = 1.0
    """Initial epsilon."""
    exploration_final_eps: float = 0.04
    """Final epsilon."""
    max_grad_norm: float = 10.0
    """Global gradient-norm clip."""

    def __post_init__(self) -> None:
        super().__post_init__()
        _positive("target_update_interval", self.target_update_interval)
        for name in ("exploration_fraction", "exploration_initial_eps", "exploration_final_eps"):
            _unit_interval(name, getattr(self, name))
        _positive("max_grad_norm", self.max_grad_norm)


@dataclass(frozen=True, kw_only=True)
class SACHyperparams(_OffPolicy):
    """Soft Actor-Critic (Haarnoja et al. 2018, arXiv:1812.05905)."""

    learning_rate: float = 1e-3
    """Adam step size of actor, critics and temperature."""
    net_arch: tuple[int, ...] = (256, 256)
    """Hidden layer sizes of actor and critics."""
    ent_coef: str | float = "auto"
    """Entropy temperature alpha: a number, or ``"auto"`` / ``"auto_<initial>"`` to learn it."""
    target_entropy: str | float = "auto"
    """Target entropy of automatic tuning; ``"auto"`` is ``-dim(action space)``."""

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_auto("ent_coef", self.ent_coef, prefix_ok=True)
        _check_auto("target_entropy", self.target_entropy, prefix_ok=False)


@dataclass(frozen=True, kw_only=True)
class TD3Hyperparams(_OffPolicy):
    """Twin Delayed DDPG (Fujimoto et al. 2018, arXiv:1802.09477)."""

    learning_rate: float = 1e-3
    """Adam step size of actor and critics."""
    net_arch: tuple[int, ...] = (400, 300)
    """Hidden layer sizes of actor and critics."""
    policy_delay: int = 2
    """Critic updates per actor (and target) update."""
    action_noise: float = 0.1
    """Std of the Gaussian exploration noise, in the action range scaled to [-1, 1]."""
    target_policy_noise: float = 0.2
    """Std of the target policy smoothing noise (scaled action range)."""
    target_noise_clip: float = 0.5
    """Clip of the target policy smoothing noise (scaled action range)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        _positive("policy_delay", self.policy_delay)
        for name in ("action_noise", "target_policy_noise", "target_noise_clip"):
            _non_negative(name, getattr(self, name))


Hyperparams: TypeAlias = (
    PPOHyperparams | A2CHyperparams | DQNHyperparams | SACHyperparams | TD3Hyperparams
)
"""Any algorithm's hyperparameter dataclass."""

H = TypeVar("H")


def _check_auto(name: str, value: str | float, *, prefix_ok: bool) -> None:
    if isinstance(value, str):
        if value == "auto" or (prefix_ok and value.startswith("auto_")):
            if value.startswith("auto_"):
                try:
                    initial = float(value[len("auto_") :])
                except ValueError:
                    initial = math.nan
                if not initial > 0:
                    raise ConfigError(
                        f"hyperparams[{name!r}]: {value!r} needs a positive number after "
                        "'auto_', e.g. 'auto_0.1'"
                    )
            return
        accepted = (
            "'auto', 'auto_<initial value>' or a number" if prefix_ok else "'auto' or a number"
        )
        raise ConfigError(f"hyperparams[{name!r}] must be {accepted}, got {value!r}")
    if name == "ent_coef":
        _positive(name, value)


def field_names(cls: type[Any]) -> tuple[str, ...]:
    """The hyperparameter names of the dataclass ``cls``, in declaration order."""
    return tuple(f.name for f in dataclasses.fields(cls))


def field_docs(cls: type[Any]) -> dict[str, str]:
    """Each field's attribute docstring (the text under it in the class body), one line.

    Read from this module's source, following the class's bases, so ``--list-hyperparams``
    and the README show the same words as the code.
    """
    import ast
    import inspect

    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):  # a subclass's docstring overrides its base's
        if not dataclasses.is_dataclass(klass):
            continue
        body = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0]
        assert isinstance(body, ast.ClassDef)
        for node, after in zip(body.body, body.body[1:], strict=False):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
            ):
                docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def field_types(cls: type[Any]) -> dict[str, Any]:
    """Each field's annotation, resolved (``from __future__`` makes them strings)."""
    return get_type_hints(cls)


def coerce(name: str, value: Any, annotation: Any) -> Any:
    """Check ``value`` against a field's ``annotation``; return it in the field's type.

    An ``int`` is accepted where a ``float`` is expected, a list where a tuple is;
    a ``bool`` is never taken for a number.

    Raises:
        ValueError: naming the hyperparameter, the value and the accepted type.
    """
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        for option in get_args(annotation):
            try:
                return coerce(name, value, option)
            except ValueError:
                continue
        raise ConfigError(f"hyperparams[{name!r}] must be {describe(annotation)}, got {value!r}")
    if origin is tuple:
        if isinstance(value, (list, tuple)):
            (item_type, _ellipsis) = get_args(annotation)
            return tuple(coerce(name, item, item_type) for item in value)
    elif annotation is bool:
        if isinstance(value, bool):
            return value
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if math.isfinite(value):
                return float(value)
    elif annotation is str:
        if isinstance(value, str):
            return value
    raise ConfigError(f"hyperparams[{name!r}] must be {describe(annotation)}, got {value!r}")


def describe(annotation: Any) -> str:
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        return " or ".join(describe(option) for option in get_args(annotation))
    if origin is tuple:
        return f"a list of {describe(get_args(annotation)[0])}"
    return {bool: "a bool", int: "an integer", float: "a finite number", str: "a string"}.get(
        annotation, str(annotation)
    )


def build(cls: type[H], overrides: Mapping[str, Any], *, algo: str) -> H:
    """The hyperparameter dataclass ``cls`` (of algorithm ``algo``) with ``overrides``.

    Raises:
        ValueError: an unknown key (the message lists the valid ones) or a bad value.
    """
    unknown = sorted(set(overrides) - set(field_names(cls)))
    if unknown:
        raise ConfigError(
            f"hyperparams: unknown key(s) {', '.join(map(repr, unknown))} for algo "
            f"{algo!r}; valid keys: {', '.join(field_names(cls))}"
        )
    return cls(**overrides)  # __post_init__ coerces and range-checks every field


def _check_types(instance: Any) -> None:
    """Reject a field whose value does not match its annotation (also for direct use)."""
    annotations = field_types(type(instance))
    for f in dataclasses.fields(instance):
        coerced = coerce(f.name, getattr(instance, f.name), annotations[f.name])
        object.__setattr__(instance, f.name, coerced)


__all__ = [
    "A2CHyperparams",
    "DQNHyperparams",
    "Hyperparams",
    "PPOHyperparams",
    "SACHyperparams",
    "TD3Hyperparams",
    "build",
    "coerce",
    "field_names",
]
