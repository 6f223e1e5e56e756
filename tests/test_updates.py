"""Every hand-written gradient step equals autograd's gradient of the loss its docstring states.

DQN, SAC and TD3 write their gradients out (``write_*_gradient``) for speed. Each
test here builds the real trainer, takes random batches, lets the trainer write its
gradient, and compares it with ``torch.autograd.grad`` of the plain loss formula
from the method's docstring, computed through the ordinary ``forward`` of the same
networks.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from rl_training import TrainConfig
from rl_training.experiment.logging import CompositeLogger
from rl_training.runtime.plan import resolve_plan
from rl_training.trainers.session import Session, trainer_class

BATCH = 32
TOLERANCE = {"rtol": 1e-4, "atol": 1e-6}


def make_trainer(algo: str, env_id: str) -> Any:
    config = TrainConfig(algo=algo, env_id=env_id, seed=0, total_timesteps=1000, device="cpu",
                         log_sinks=("json",), hyperparams={"net_arch": [32, 24]})  # fmt: skip
    plan = resolve_plan(config)
    session = Session.open(plan, CompositeLogger({}))
    trainer = trainer_class(plan.spec)(session)
    session.close()
    return trainer


def assert_same_gradients(loss: torch.Tensor, module: nn.Module) -> None:
    """The gradient the trainer wrote into ``module`` is autograd's of ``loss``."""
    reference = torch.autograd.grad(loss, list(module.parameters()))
    for mine, expected in zip(written(module), reference, strict=True):
        torch.testing.assert_close(mine, expected, **TOLERANCE)


def written(module: nn.Module) -> list[torch.Tensor]:
    return [p.grad.clone() for p in module.parameters()]  # type: ignore[union-attr]


def poison(module: nn.Module) -> None:
    for p in module.parameters():
        p.grad.fill_(7.0)  # type: ignore[union-attr]


def assert_untouched(module: nn.Module) -> None:
    for p in module.parameters():
        assert torch.all(p.grad == 7.0)  # type: ignore[union-attr]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dqn_q_gradient_is_autograds_huber_loss(seed):
    """DQN's written-out step is the gradient of mean Huber(Q(s, a) - y) over the batch."""
    trainer = make_trainer("dqn", "CartPole-v1")
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(BATCH, 4, generator=g)
    # Targets both within 1 and far from Q: both pieces of the Huber loss are exercised.
    targets = torch.randn(BATCH, 1, generator=g) * 3
    actions = torch.randint(0, 2, (BATCH,), generator=g)
    taken = nn.functional.one_hot(actions, 2).float()

    trainer.write_q_gradient(obs, targets, taken)
    q = trainer.q_net(obs).gather(1, actions.unsqueeze(1))
    loss = nn.functional.smooth_l1_loss(q, targets)
    assert_same_gradients(loss, trainer.q_net)


@pytest.mark.parametrize("algo", ["sac", "td3"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_critic_gradient_is_autograds_squared_error(algo, seed):
    """The twin critics' written-out step is the gradient of the (half, for SAC) summed MSE."""
    trainer = make_trainer(algo, "Pendulum-v1")
    g = torch.Generator().manual_seed(seed)
    obs, actions = torch.randn(BATCH, 3, generator=g), torch.rand(BATCH, 1, generator=g) * 2 - 1
    target_q = torch.randn(BATCH, generator=g)

    trainer.write_critic_gradient(obs, actions, target_q)
    q = trainer.critic(obs, actions)  # (2, B)
    scale = 0.5 if algo == "sac" else 1.0
    loss = scale * (q - target_q).square().mean(1).sum()
    assert_same_gradients(loss, trainer.critic)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_td3_actor_gradient_is_autograds_minus_mean_q1(seed):
    """TD3's written-out actor step is the gradient of -mean Q1(s, mu(s)); critics untouched."""
    trainer = make_trainer("td3", "Pendulum-v1")
    obs = torch.randn(BATCH, 3, generator=torch.Generator().manual_seed(seed))
    poison(trainer.critic)

    trainer.write_actor_gradient(obs)
    assert_untouched(trainer.critic)
    loss = -trainer.critic(obs, trainer.actor(obs))[0].mean()
    assert_same_gradients(loss, trainer.actor)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sac_actor_gradient_is_autograds_entropy_regularised_loss(seed):
    """SAC's written-out actor step: the gradient of mean(alpha logp - min Q); critics untouched."""
    trainer = make_trainer("sac", "Pendulum-v1")
    obs = torch.randn(BATCH, 3, generator=torch.Generator().manual_seed(seed))
    alpha = torch.tensor(0.3)
    with torch.no_grad():  # push some log-stds outside the clamp: its gradient is 0 there
        trainer.actor.net.layers[-1].bias[1] = 5.0 if seed == 1 else 0.0
    poison(trainer.critic)

    pi_action, _, saved = trainer.actor.forward_saving(obs, torch.Generator().manual_seed(seed))
    trainer.write_actor_gradient(obs, pi_action, saved, alpha)
    assert_untouched(trainer.critic)
    action, log_prob = trainer.actor(obs, torch.Generator().manual_seed(seed))
    torch.testing.assert_close(action, pi_action)  # the same draws
    loss = (alpha * log_prob - trainer.critic(obs, action).min(0).values).mean()
    assert_same_gradients(loss, trainer.actor)
