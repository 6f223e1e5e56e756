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
from collections.abc import Mapping
from typing import Any, ClassVar

import gymnasium as gym
import torch
from torch import nn

from rl_training.hyperparams import DQNHyperparams
from rl_training.runtime.environments import is_atari
from rl_training.trainers.buffers import replay_buffer
from rl_training.trainers.checkpoint import SavedModel
from rl_training.trainers.envs import discrete_space
from rl_training.trainers.networks import MLP, mlp, set_precision
from rl_training.trainers.observations import ObsLayout, layout, obs_to_tensor
from rl_training.trainers.optim import (
    FlatOptimizer,
    flatten_parameters,
    linear_schedule,
    soft_update,
)
from rl_training.trainers.session import Policy, Session, load_state, state_of


class CnnQNetwork(nn.Module):
    """Q(s, .) of image (or packed Dict) observations: the layout's encoder (a Nature
    CNN), then an MLP with one output per action (SB3's ``CnnPolicy``)."""

    def __init__(self, obs: ObsLayout, n_actions: int, net_arch: tuple[int, ...]) -> None:
        super().__init__()
        self.features = obs.encoder()
        self.obs_dims = len(obs.shape)
        self.head = mlp(
            self.features.out_dim, net_arch, n_actions, activation=torch.relu, out_gain=None
        )

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """``(..., n_actions)`` of observations ``(..., *shape)`` (minibatches drawn
        together have two leading axes)."""
        lead = obs.shape[: obs.dim() - self.obs_dims]
        x = obs.reshape(-1, *obs.shape[obs.dim() - self.obs_dims :])
        q: torch.Tensor = self.head(self.features(x))
        return q.reshape(*lead, q.shape[-1])


def q_network(
    space: gym.Space[Any], n_actions: int, net_arch: tuple[int, ...]
) -> MLP | CnnQNetwork:
    """Q(s, .): an MLP with ReLU and one output per action (SB3's QNetwork), after a
    CNN for images."""
    found = layout(space)
    if found.has_images:
        return CnnQNetwork(found, n_actions, net_arch)
    return mlp(found.size, net_arch, n_actions, activation=torch.relu, out_gain=None)


class DQNTrainer:
    """DQN on a session: one vector step per iteration, a training phase when due."""

    CPU_THREADS: ClassVar[int | None] = None
    """Intra-op threads on the CPU (None: torch default; 256-unit layers gain from both cores)."""
    SAVED_MODULES: ClassVar[tuple[str, ...]] = ("q_net",)
    """The modules a model file holds (attributes of the trainer)."""

    def __init__(self, session: Session[DQNHyperparams]) -> None:
        self.session = session
        hp, device = session.hp, session.device
        obs = layout(session.plan.observation_space)
        self.n_actions = int(discrete_space(session.plan.action_space).n)
        self.q_net = q_network(obs.space, self.n_actions, hp.net_arch).to(device)
        set_precision(self.q_net, hp.precision)
        self.q_target = copy.deepcopy(self.q_net)
        self.optimizer = FlatOptimizer([self.q_net], "adam", lr=hp.learning_rate)
        self.target_params = flatten_parameters([self.q_target], with_grad=False)
        # Atari's stacked frames each once (FrameReplayBuffer)
        frame_stacked = is_atari(session.plan.config.env_id)
        self.buffer = replay_buffer(
            hp.buffer_size, obs, hp.num_envs, (), True, device, frame_stacked=frame_stacked
        )
        self.n_updates = 0
        self.train_values: dict[str, Any] = {}
        # Minibatches drawn together, their targets in one forward of the target network:
        # up to ~1,024 rows (and ~64 MB of observations). Larger forwards are no faster,
        # and their activations come as fresh memory from the kernel every phase
        # (README, "Performance notes").
        rows = max(1, min(1024, 2**25 // obs.nbytes))
        self.batches_at_once = max(1, min(hp.gradient_steps, rows // hp.batch_size))
        # Counted in vector steps, as SB3 does: max(interval // num_envs, 1)
        self.target_every = max(hp.target_update_interval // hp.num_envs, 1)

    def iteration(self) -> Mapping[str, Any]:
        """One epsilon-greedy vector step; a training phase every ``train_freq``."""
        session, hp, stepper = self.session, self.session.hp, self.session.stepper
        g, device, total = session.generator, session.device, session.total_timesteps

        # Collect: epsilon-greedy (random actions only until learning_starts)
        eps = linear_schedule(
            hp.exploration_initial_eps,
            hp.exploration_final_eps,
            stepper.steps / (hp.exploration_fraction * total) if hp.exploration_fraction else 1.0,
        )
        obs = stepper.obs
        random_actions = torch.randint(
            0, self.n_actions, (hp.num_envs,), generator=g, device=device
        )
        if stepper.steps < hp.learning_starts:
            action = random_actions
        else:
            with torch.no_grad():
                greedy = self.q_net(obs).argmax(-1)
            explore = torch.rand(hp.num_envs, generator=g, device=device) < eps
            action = torch.where(explore, random_actions, greedy)
        self.buffer.collect(stepper, action, action.cpu().numpy())

        # Compute targets and optimise. The target network and the buffer stay as they
        # are for the whole phase, so its minibatches are drawn, and their targets
        # computed, together: one forward of the target network instead of one per step.
        if hp.trains_after(stepper.steps, stepper.vector_steps):
            done = 0
            while done < hp.gradient_steps:
                n = min(hp.gradient_steps - done, self.batches_at_once)
                batches = self.buffer.sample(hp.batch_size, g, batches=n)
                with torch.no_grad():
                    next_q = self.q_target(batches.next_obs).max(-1).values
                    targets = batches.rewards + (1 - batches.terminations) * hp.gamma * next_q
                    targets = targets.unsqueeze(-1)
                    taken = nn.functional.one_hot(batches.actions, self.n_actions).float()
                for i in range(n):
                    q_all = self.write_q_gradient(batches.obs[i], targets[i], taken[i])
                    self.optimizer.apply_gradient(hp.max_grad_norm)
                    self.n_updates += 1
                done += n
            q = q_all.gather(-1, batches.actions[n - 1].unsqueeze(-1)).squeeze(-1)
            self.train_values = {
                "loss/q": nn.functional.smooth_l1_loss(q, targets[n - 1].squeeze(-1)),
                "train/q_mean": q.mean(),
                "train/n_updates": self.n_updates,
            }

        # Target network (every target_update_interval environment steps)
        if stepper.vector_steps % self.target_every == 0:
            soft_update(self.target_params, self.optimizer.param, hp.tau)

        # Log
        return {"train/epsilon": eps, **self.train_values}

    def write_q_gradient(
        self, obs: torch.Tensor, targets: torch.Tensor, taken: torch.Tensor
    ) -> torch.Tensor:
        """Write the gradient of the Q-network's loss into its parameters' ``.grad``:

            L(theta) = mean_b huber(Q_theta(s_b, a_b) - y_b)

        the Huber loss (smooth L1, threshold 1, mean over the batch of B) of the taken
        actions' Q-values against the targets ``y = r + gamma (1 - terminated)
        max_a' Q_target(s', a')``. It is written out, not taken through autograd:
        dL/dQ(s_b, .) = clamp(Q - y_b, -1, 1) / B at the taken action (``taken`` is
        its one-hot, ``(B, n_actions)``), 0 elsewhere, then back through the MLP.
        ``targets`` is ``(B, 1)``. To change the loss, change this method; the test
        ``test_update_gradients`` checks it against autograd on the formula above.

        Returns:
            ``Q(s, .)`` of the batch, ``(B, n_actions)``.
        """
        q_net = self.q_net
        if isinstance(q_net, CnnQNetwork):  # a CNN: through autograd
            self.optimizer.zero_grad()
            q_all = q_net(obs)
            q = (q_all * taken).sum(-1, keepdim=True)
            nn.functional.smooth_l1_loss(q, targets).backward()  # type: ignore[no-untyped-call]
            detached: torch.Tensor = q_all.detach()
            return detached
        q_all, inputs = q_net.forward_saving(obs)
        grad_q = (q_all - targets).clamp_(-1.0, 1.0).div_(obs.shape[0])
        q_net.backward_(inputs, grad_q.mul_(taken))
        return q_all

    def state_dict(self) -> dict[str, Any]:
        """Networks, optimiser, replay buffer, counters and the session's state."""
        return state_of(
            self, "session", "q_net", "q_target", "optimizer", "buffer", "n_updates", "train_values"
        )

    load_state_dict = load_state
    """Continue from :meth:`state_dict`."""

    @staticmethod
    def load_policy(
        saved: SavedModel,
        observation_space: gym.Space[Any],
        action_space: gym.Space[Any],
        device: torch.device,
    ) -> Policy:
        """Rebuild the Q-network: greedy, or epsilon-greedy with the final epsilon."""
        hp = saved.hyperparams
        n_actions = int(discrete_space(action_space).n)
        q_net = q_network(observation_space, n_actions, tuple(hp["net_arch"])).to(device)
        q_net.load_state_dict(saved.state_dicts["q_net"])
        q_net.eval()

        def policy(obs: Any, deterministic: bool, generator: torch.Generator) -> Any:
            greedy = q_net(obs_to_tensor(obs, observation_space, device)).argmax(-1)
            if not deterministic:
                explore = (
                    torch.rand(greedy.shape, generator=generator) < hp["exploration_final_eps"]
                )
                random_actions = torch.randint(0, n_actions, greedy.shape, generator=generator)
                greedy = torch.where(explore, random_actions, greedy)
            return greedy.cpu().numpy()

        return policy
