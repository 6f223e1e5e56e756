"""DQN: Deep Q-Network (Mnih et al. 2015).

Paper: https://doi.org/10.1038/nature14236. As in Stable-Baselines3: epsilon-greedy
exploration decaying linearly over ``exploration_fraction`` of the run, a replay
buffer, a target network updated every ``target_update_interval`` environment steps
(hard copy with ``tau=1``), the Huber loss, and gradient-norm clipping. Training
phases of ``gradient_steps`` run every ``train_freq`` vector steps. Discrete actions
only. Truncated episodes are bootstrapped from their final observation.

Glossary: ``q`` Q-values, ``eps`` epsilon.
"""

from __future__ import annotations

import copy
from typing import Any

import gymnasium as gym
import torch
from torch import nn

from rl_training.hyperparams import DQNHyperparams
from rl_training.trainers import Learned, Policy, Session
from rl_training.trainers.buffers import ReplayBuffer
from rl_training.trainers.common import (
    EnvStepper,
    FlatOptimizer,
    PeriodicLog,
    SavedModel,
    discrete_space,
    flatten_parameters,
    linear_schedule,
    mlp,
    obs_dim,
    obs_to_tensor,
    soft_update,
)

CPU_THREADS: int | None = 1
"""Intra-op threads on the CPU (batches of 64: one thread is fastest)."""


def q_network(obs_size: int, n_actions: int, net_arch: tuple[int, ...]) -> nn.Module:
    """Q(s, .): an MLP with ReLU and one output per action (SB3's QNetwork)."""
    return mlp(obs_size, net_arch, n_actions, activation=torch.relu, out_gain=None)


def learn(session: Session) -> Learned:
    """Train DQN in ``session`` for ``config.total_timesteps`` environment steps."""
    hp: DQNHyperparams = session.hp
    envs, device, g = session.envs, session.device, session.generator
    obs_space, act_space = envs.single_observation_space, envs.single_action_space
    n_actions = int(discrete_space(act_space).n)

    q_net = q_network(obs_dim(obs_space), n_actions, hp.net_arch).to(device)
    q_target = copy.deepcopy(q_net)
    optimizer = FlatOptimizer([q_net], torch.optim.Adam, lr=hp.learning_rate)
    target_params = flatten_parameters([q_target], with_grad=False)

    buffer = ReplayBuffer(hp.buffer_size, obs_dim(obs_space), (), True, device)
    stepper = EnvStepper(session)
    total = session.config.total_timesteps
    n_updates = 0
    train_values: dict[str, Any] = {}
    log = PeriodicLog(session, hp.log_interval)
    # Counted in vector steps, as SB3 does: max(interval // num_envs, 1)
    target_every = max(hp.target_update_interval // hp.num_envs, 1)

    while stepper.steps < total:
        # Collect: epsilon-greedy (random actions only until learning_starts)
        eps = linear_schedule(
            hp.exploration_initial_eps,
            hp.exploration_final_eps,
            stepper.steps / (hp.exploration_fraction * total) if hp.exploration_fraction else 1.0,
        )
        obs = stepper.obs
        random_actions = torch.randint(0, n_actions, (hp.num_envs,), generator=g, device=device)
        if stepper.steps < hp.learning_starts:
            action = random_actions
        else:
            with torch.no_grad():
                greedy = q_net(obs).argmax(-1)
            explore = torch.rand(hp.num_envs, generator=g, device=device) < eps
            action = torch.where(explore, random_actions, greedy)
        next_obs, reward, terminated, truncated = stepper.step(action.cpu().numpy())
        buffer.add(obs, next_obs, action, reward, terminated, truncated)

        # Optimise
        if stepper.steps > hp.learning_starts and stepper.vector_steps % hp.train_freq == 0:
            for _ in range(hp.gradient_steps):
                batch = buffer.sample(hp.batch_size, g)
                with torch.no_grad():
                    next_q = q_target(batch.next_obs).max(-1).values
                    target_q = batch.rewards + (1 - batch.terminations) * hp.gamma * next_q
                q_all = q_net(batch.obs)
                q = q_all.gather(-1, batch.actions.unsqueeze(-1)).squeeze(-1)
                loss = nn.functional.smooth_l1_loss(q, target_q)
                optimizer.step(loss, hp.max_grad_norm)
                n_updates += 1
            train_values = {
                "loss/q": loss.detach(),
                "train/q_mean": q.detach().mean(),
                "train/n_updates": n_updates,
            }

        # Target network (every target_update_interval environment steps)
        if stepper.vector_steps % target_every == 0:
            soft_update(target_params, optimizer.param, hp.tau)

        # Log
        log(stepper.steps, {"train/epsilon": eps, **train_values})

    return Learned(modules={"q_net": q_net}, steps=stepper.steps)


def load_policy(
    saved: SavedModel, observation_space: gym.Space[Any], action_space: gym.Space[Any]
) -> Policy:
    """Rebuild the Q-network for evaluation: greedy, or epsilon-greedy with the final epsilon."""
    hp = saved.hyperparams
    n_actions = int(discrete_space(action_space).n)
    q_net = q_network(obs_dim(observation_space), n_actions, tuple(hp["net_arch"]))
    q_net.load_state_dict(saved.state_dicts["q_net"])
    q_net.eval()

    def policy(obs: Any, deterministic: bool, generator: torch.Generator) -> Any:
        greedy = q_net(obs_to_tensor(obs, observation_space, torch.device("cpu"))).argmax(-1)
        if not deterministic:
            explore = torch.rand(greedy.shape, generator=generator) < hp["exploration_final_eps"]
            random_actions = torch.randint(0, n_actions, greedy.shape, generator=generator)
            greedy = torch.where(explore, random_actions, greedy)
        return greedy.numpy()

    return policy
