"""What the rollout trainers (PPO, A2C) share: the rollout, its length, the learning
rate schedule, the training row and the evaluation policy."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch

from rl_training.hyperparams import _OnPolicy
from rl_training.trainers.buffers import RolloutBuffer
from rl_training.trainers.checkpoint import SavedModel
from rl_training.trainers.networks import ActorCritic, set_precision
from rl_training.trainers.observations import layout, obs_to_tensor
from rl_training.trainers.session import Policy, Session


def remaining(session: Session[Any]) -> float:
    """The fraction of the run still to go, 1 at its start: annealed values' factor."""
    return 1.0 - session.steps / session.total_timesteps


def next_rollout(session: Session[Any]) -> tuple[int, float]:
    """``(length, learning rate)`` of the next rollout.

    The length is ``n_steps`` per environment, the last rollout cut short so the run
    stops within ``num_envs - 1`` steps (per rank) of ``total_timesteps``. The learning rate is
    annealed linearly from ``learning_rate`` to 0 over the run when ``anneal_lr``
    (CleanRL).
    """
    hp: _OnPolicy = session.hp
    total = session.total_timesteps
    per_env_left = -(-total // session.stepper.step_size) - session.stepper.vector_steps  # ceil
    length = min(hp.n_steps, per_env_left)
    if hp.anneal_lr:
        return length, hp.learning_rate * remaining(session)
    return length, hp.learning_rate


def actor_critic_and_buffer(session: Session[Any]) -> tuple[ActorCritic, RolloutBuffer]:
    """The actor-critic for the session's spaces, and a rollout buffer of ``n_steps``."""
    hp, device = session.hp, session.device
    obs_space = session.plan.observation_space
    agent = ActorCritic(
        obs_space, session.plan.action_space, hp.net_arch, hp.log_std_init,
        activation=hp.activation, ortho_init=hp.ortho_init,
    ).to(device)  # fmt: skip
    set_precision(agent.features, hp.precision)  # the CNN; the small MLPs stay fp32
    buffer = RolloutBuffer(
        hp.n_steps, hp.num_envs, layout(obs_space), agent.action_shape, agent.discrete, device
    )
    return agent, buffer


def collect_rollout(
    session: Session[Any], agent: ActorCritic, buffer: RolloutBuffer, length: int
) -> None:
    """Step every env ``length`` times with the current policy, filling ``buffer``.

    Truncated episodes get ``gamma * V(final_obs)`` added to their last reward, so a
    time limit is not learned as a terminal state (as SB3 does); episode statistics
    see the environment's own rewards.
    """
    stepper, gamma = session.stepper, session.hp.gamma
    act = agent.rollout_act()
    for t in range(length):
        obs = stepper.obs
        with torch.no_grad():
            action, logp, value = act(obs, session.generator)
        next_obs, reward, terminated, truncated = stepper.step(agent.to_env(action))
        stored_reward = reward
        if truncated.any():
            index = np.flatnonzero(truncated)
            with torch.no_grad():
                final_values = agent.value(next_obs[index]).cpu().numpy()
            stored_reward = reward.copy()
            stored_reward[truncated] += gamma * final_values
        buffer.add(t, obs, action, logp, value, stored_reward, terminated | truncated)


def training_row(
    agent: ActorCritic,
    losses: torch.Tensor,
    values: torch.Tensor,
    returns: torch.Tensor,
    learning_rate: float,
    n_updates: int,
) -> dict[str, Any]:
    """The values of an on-policy training row (tensors: one host copy when logged).

    ``losses`` holds the policy, value and entropy losses, then any diagnostics the
    caller adds to the row itself.
    """
    row: dict[str, Any] = {
        "loss/policy": losses[0],
        "loss/value": losses[1],
        "loss/entropy": losses[2],
        "train/explained_variance": explained_variance(values, returns),
        "train/learning_rate": learning_rate,
        "train/n_updates": n_updates,
    }
    if not agent.discrete:
        row["train/std"] = agent.log_std.detach().exp().mean()
    return row


def explained_variance(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``1 - Var[target - predicted] / Var[target]`` (NaN when the target is constant)."""
    var_target = target.var()
    return 1 - (target - predicted).var() / var_target


def actor_critic_policy(
    saved: SavedModel,
    observation_space: gym.Space[Any],
    action_space: gym.Space[Any],
    device: torch.device,
) -> Policy:
    """An :class:`ActorCritic` from a saved model, as a policy on ``device`` (PPO and A2C)."""
    hp = saved.hyperparams
    agent = ActorCritic(observation_space, action_space, hp["net_arch"],
                        activation=hp.get("activation", "tanh"))  # fmt: skip
    agent.to(device).load_state_dict(saved.state_dicts["agent"])
    agent.eval()

    def policy(obs: np.ndarray, deterministic: bool, generator: torch.Generator) -> np.ndarray:
        obs_t = obs_to_tensor(obs, observation_space, device)
        if deterministic:
            return agent.to_env(agent.deterministic_action(obs_t))
        return agent.to_env(agent.act(obs_t, generator)[0])

    return policy
