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

from rl_training import TrainConfig, hyperparams
from rl_training.experiment.logging import CompositeLogger
from rl_training.runtime.plan import resolve_plan
from rl_training.trainers.session import Session, trainer_class

BATCH = 32
TOLERANCE = {
    "fp32": {"rtol": 1e-4, "atol": 1e-6},
    # bf16: the same bfloat16 matmuls on both sides, summed in another order
    "bf16": {"rtol": 2e-2, "atol": 2e-3},
}
PRECISIONS = pytest.mark.parametrize("precision", hyperparams.PRECISIONS)


def make_trainer(algo: str, env_id: str, precision: str = "fp32") -> Any:
    hp = {"net_arch": [32, 24], "precision": precision}
    config = TrainConfig(algo=algo, env_id=env_id, seed=0, total_timesteps=1000, device="cpu",
                         log_sinks=("json",), hyperparams=hp)  # fmt: skip
    plan = resolve_plan(config)
    session = Session.open(plan, CompositeLogger({}))
    trainer = trainer_class(plan.spec)(session)
    session.close()
    return trainer


def assert_same_gradients(loss: torch.Tensor, module: nn.Module, precision: str = "fp32") -> None:
    """The gradient the trainer wrote into ``module`` is autograd's of ``loss``."""
    reference = torch.autograd.grad(loss, list(module.parameters()))
    for mine, expected in zip(written(module), reference, strict=True):
        assert mine.dtype == torch.float32  # the optimiser's gradient: fp32 in any precision
        torch.testing.assert_close(mine, expected, **TOLERANCE[precision])


def written(module: nn.Module) -> list[torch.Tensor]:
    return [p.grad.clone() for p in module.parameters()]  # type: ignore[union-attr]


def poison(module: nn.Module) -> None:
    for p in module.parameters():
        p.grad.fill_(7.0)  # type: ignore[union-attr]


def assert_untouched(module: nn.Module) -> None:
    for p in module.parameters():
        assert torch.all(p.grad == 7.0)  # type: ignore[union-attr]


@PRECISIONS
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dqn_q_gradient_is_autograds_huber_loss(seed, precision):
    """DQN's written-out step is the gradient of mean Huber(Q(s, a) - y) over the batch."""
    trainer = make_trainer("dqn", "CartPole-v1", precision)
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(BATCH, 4, generator=g)
    # Targets both within 1 and far from Q: both pieces of the Huber loss are exercised.
    targets = torch.randn(BATCH, 1, generator=g) * 3
    actions = torch.randint(0, 2, (BATCH,), generator=g)
    taken = nn.functional.one_hot(actions, 2).float()

    trainer.write_q_gradient(obs, targets, taken)
    q = trainer.q_net(obs).gather(1, actions.unsqueeze(1))
    loss = nn.functional.smooth_l1_loss(q, targets)
    assert_same_gradients(loss, trainer.q_net, precision)


@PRECISIONS
@pytest.mark.parametrize("algo", ["sac", "td3"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_critic_gradient_is_autograds_squared_error(algo, seed, precision):
    """The twin critics' written-out step is the gradient of the (half, for SAC) summed MSE."""
    trainer = make_trainer(algo, "Pendulum-v1", precision)
    g = torch.Generator().manual_seed(seed)
    obs, actions = torch.randn(BATCH, 3, generator=g), torch.rand(BATCH, 1, generator=g) * 2 - 1
    target_q = torch.randn(BATCH, generator=g)

    trainer.write_critic_gradient(obs, actions, target_q)
    q = trainer.critic(obs, actions)  # (2, B)
    scale = 0.5 if algo == "sac" else 1.0
    loss = scale * (q - target_q).square().mean(1).sum()
    assert_same_gradients(loss, trainer.critic, precision)


@PRECISIONS
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_td3_actor_gradient_is_autograds_minus_mean_q1(seed, precision):
    """TD3's written-out actor step is the gradient of -mean Q1(s, mu(s)); critics untouched."""
    trainer = make_trainer("td3", "Pendulum-v1", precision)
    obs = torch.randn(BATCH, 3, generator=torch.Generator().manual_seed(seed))
    poison(trainer.critic)

    trainer.write_actor_gradient(obs)
    assert_untouched(trainer.critic)
    loss = -trainer.critic(obs, trainer.actor(obs))[0].mean()
    assert_same_gradients(loss, trainer.actor, precision)


@PRECISIONS
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sac_actor_gradient_is_autograds_entropy_regularised_loss(seed, precision):
    """SAC's written-out actor step: the gradient of mean(alpha logp - min Q); critics untouched."""
    trainer = make_trainer("sac", "Pendulum-v1", precision)
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
    assert_same_gradients(loss, trainer.actor, precision)


@pytest.mark.parametrize("algo", ["dqn", "sac", "td3"])
def test_bf16_runs_the_hidden_layers_in_bfloat16_near_the_fp32_step(algo):
    """``precision="bf16"``: the hidden layers compute in bfloat16 (their saved inputs
    are bfloat16; the heads' are float32), and the step written stays within bfloat16's
    rounding of the fp32 one on the same weights and batch."""
    env_id = "CartPole-v1" if algo == "dqn" else "Pendulum-v1"
    steps = {}
    for precision in ("fp32", "bf16"):
        trainer = make_trainer(algo, env_id, precision)  # seed 0: the same initial weights
        g = torch.Generator().manual_seed(3)
        obs = torch.randn(BATCH, 4 if algo == "dqn" else 3, generator=g)
        if algo == "dqn":
            targets = torch.randn(BATCH, 1, generator=g) * 3
            taken = nn.functional.one_hot(torch.randint(0, 2, (BATCH,), generator=g), 2).float()
            trainer.write_q_gradient(obs, targets, taken)
            network = trainer.q_net
            _, inputs = network.forward_saving(obs)
        else:
            actions = torch.rand(BATCH, 1, generator=g) * 2 - 1
            trainer.write_critic_gradient(obs, actions, torch.randn(BATCH, generator=g))
            network = trainer.critic
            _, inputs = network.forward_saving(obs, actions)
        hidden_dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        assert [x.dtype for x in inputs] == [hidden_dtype] * 2 + [torch.float32]  # 32, 24, head
        steps[precision] = torch.cat([p.grad.reshape(-1) for p in network.parameters()])
    difference = torch.linalg.vector_norm(steps["bf16"] - steps["fp32"])
    relative = float(difference / torch.linalg.vector_norm(steps["fp32"]))
    assert 0 < relative < 0.05, relative  # not fp32 in disguise, and not another step
