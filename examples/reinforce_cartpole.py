"""REINFORCE on CartPole in one file, CleanRL style, logging through rl_training.create_run.

Williams 1992 ("Simple statistical gradient-following algorithms"), with a value
baseline. The loop is ordinary PyTorch; the only rl-training part is `create_run`:
the run directory, metrics.jsonl, TensorBoard events, run.json and the statuses.

    python examples/reinforce_cartpole.py --total-timesteps 50000
    tensorboard --logdir runs
"""

from __future__ import annotations

import argparse
import dataclasses

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from rl_training import create_run


@dataclasses.dataclass
class Args:
    """Hyperparameters (logged as the run's config)."""

    env_id: str = "CartPole-v1"
    seed: int = 1
    total_timesteps: int = 50_000
    learning_rate: float = 1e-2
    gamma: float = 0.99


def parse_args() -> Args:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for field in dataclasses.fields(Args):
        parser.add_argument(f"--{field.name.replace('_', '-')}", type=type(field.default),
                            default=field.default)  # fmt: skip
    return Args(**vars(parser.parse_args()))


def main() -> None:
    args = parse_args()
    torch.manual_seed(args.seed)
    env = gym.make(args.env_id)
    obs_size, n_actions = env.observation_space.shape[0], env.action_space.n
    policy = nn.Sequential(nn.Linear(obs_size, 64), nn.Tanh(), nn.Linear(64, n_actions))
    baseline = nn.Sequential(nn.Linear(obs_size, 64), nn.Tanh(), nn.Linear(64, 1))
    optimizer = torch.optim.Adam([*policy.parameters(), *baseline.parameters()], args.learning_rate)

    with create_run("reinforce", args) as run:  # <- the one rl-training line
        global_step, episode = 0, 0
        while global_step < args.total_timesteps:
            # Collect one episode
            obs, _ = env.reset(seed=args.seed + episode)
            observations, log_probs, rewards = [], [], []
            done = False
            while not done:
                obs_t = torch.as_tensor(obs, dtype=torch.float32)
                dist = torch.distributions.Categorical(logits=policy(obs_t))
                action = dist.sample()
                obs, reward, terminated, truncated, _ = env.step(action.item())
                observations.append(obs_t)
                log_probs.append(dist.log_prob(action))
                rewards.append(float(reward))
                done = terminated or truncated
            global_step += len(rewards)
            episode += 1

            # Returns-to-go and advantages against the baseline
            returns = np.zeros(len(rewards), dtype=np.float32)
            running = 0.0
            for t in reversed(range(len(rewards))):
                running = rewards[t] + args.gamma * running
                returns[t] = running
            returns_t = torch.as_tensor(returns)
            values = baseline(torch.stack(observations)).squeeze(-1)
            advantages = returns_t - values.detach()

            # Optimise
            policy_loss = -(torch.stack(log_probs) * advantages).mean()
            value_loss = nn.functional.mse_loss(values, returns_t)
            optimizer.zero_grad()
            (policy_loss + 0.5 * value_loss).backward()
            optimizer.step()

            # Log
            run.logger.log_metrics(
                {
                    "episode/return": sum(rewards),
                    "episode/length": len(rewards),
                    "loss/policy": policy_loss.detach(),
                    "loss/value": value_loss.detach(),
                },
                global_step,
            )
    env.close()
    print(run.run_dir)


if __name__ == "__main__":
    main()
