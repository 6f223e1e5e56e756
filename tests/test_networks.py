"""EnsembleMLP (the twin critics) against each member computed on its own."""

from __future__ import annotations

import pytest
import torch

from rl_training.trainers.networks import EnsembleMLP


def _member_reference(net: EnsembleMLP, x: torch.Tensor, k: int) -> torch.Tensor:
    last = len(net.weights) - 1
    for i, (w, b) in enumerate(zip(net.weights, net.biases, strict=True)):
        x = torch.nn.functional.linear(x, w[k].t(), b[k, 0])
        if i < last:
            x = torch.relu(x)
    return x


@pytest.mark.parametrize(("out_dim", "product_head"), [(1, True), (1, False), (3, True)])
def test_every_member_and_its_gradient_match_a_plain_mlp(out_dim, product_head):
    """Each ensemble member computes, and differentiates, as the plain MLP with its weights."""
    torch.manual_seed(0)
    net = EnsembleMLP(2, 5, (16, 8), out_dim, product_head=product_head)
    assert net.product_head == (product_head and out_dim == 1)
    x = torch.randn(32, 5)
    out = net(x)
    assert out.shape == (2, 32, out_dim)
    reference = torch.stack([_member_reference(net, x, k) for k in range(2)])
    torch.testing.assert_close(out, reference)
    for k in range(2):
        member, _ = net.member_saving(x, k)
        torch.testing.assert_close(member, reference[k])

    grads = torch.autograd.grad(out.square().sum(), net.weights + net.biases)
    ref_grads = torch.autograd.grad(reference.square().sum(), net.weights + net.biases)
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want)


def test_detach_moves_only_the_input():
    """detach=True lets gradients reach the input but none of the network's parameters."""
    torch.manual_seed(1)
    net = EnsembleMLP(2, 4, (8,), 1, product_head=True)
    x = torch.randn(6, 4, requires_grad=True)
    net(x, detach=True).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in net.parameters())


@pytest.mark.parametrize("activation", [torch.relu, torch.tanh])
def test_written_out_backward_is_autograds(activation):
    """MLP.backward_ writes the gradients autograd would, without building a graph."""
    from rl_training.trainers.networks import MLP
    from rl_training.trainers.optim import flatten_parameters

    torch.manual_seed(2)
    net = MLP(5, (16, 8), 3, activation=activation)
    flat = flatten_parameters([net])  # .grad views, as FlatOptimizer attaches them
    x = torch.randn(32, 5)
    grad_out = torch.randn(32, 3)

    out, inputs = net.forward_saving(x)
    torch.testing.assert_close(out, net(x))
    assert not out.requires_grad  # no graph built
    net.backward_(inputs, grad_out)
    assert flat.grad is not None
    written = flat.grad.clone()

    flat.grad.zero_()
    net(x).backward(grad_out)
    torch.testing.assert_close(written, flat.grad)
    assert written.abs().sum() > 0


@pytest.mark.parametrize(("out_dim", "product_head"), [(1, True), (1, False), (3, False)])
def test_ensemble_written_out_backward_is_autograds(out_dim, product_head):
    """EnsembleMLP.backward_ overwrites (not adds to) .grad with autograd's gradients."""
    from rl_training.trainers.optim import flatten_parameters

    torch.manual_seed(3)
    net = EnsembleMLP(2, 5, (16, 8), out_dim, product_head=product_head)
    flat = flatten_parameters([net])
    x = torch.randn(32, 5)
    grad_out = torch.randn(2, 32, out_dim)

    out, inputs = net.forward_saving(x)
    torch.testing.assert_close(out, net(x))
    assert not out.requires_grad
    flat.grad.fill_(7.0)  # written, not accumulated: stale values must not survive
    net.backward_(inputs, grad_out)
    written = flat.grad.clone()

    flat.grad.zero_()
    net(x).backward(grad_out)
    torch.testing.assert_close(written, flat.grad)
    # each member's gradient is its own: the second member's output gradient at zero
    # leaves its parameters' gradients at zero
    grad_out[1] = 0.0
    net.backward_(inputs, grad_out)
    assert all(p.grad[1].abs().sum() == 0 for p in net.parameters())
    assert all(p.grad[0].abs().sum() > 0 for p in net.parameters())


@pytest.mark.parametrize("product_head", [True, False])
def test_twin_critic_written_out_critic_loss_gradient_is_autograds(product_head):
    """The twin critic's written-out TD loss gradient equals autograd's."""
    from rl_training.trainers.networks import TwinCritic
    from rl_training.trainers.optim import flatten_parameters

    torch.manual_seed(4)
    critic = TwinCritic(3, 1, (16, 8), product_head=product_head)
    flat = flatten_parameters([critic])
    obs, action, target = torch.randn(64, 3), torch.rand(64, 1) * 2 - 1, torch.randn(64)

    q, inputs = critic.forward_saving(obs, action)
    assert q.shape == (2, 64)
    critic.backward_(inputs, (q - target) * (2.0 / 64))  # TD3's critic loss gradient
    written = flat.grad.clone()

    flat.grad.zero_()
    (critic(obs, action) - target).square().mean(1).sum().backward()
    torch.testing.assert_close(written, flat.grad)


@pytest.mark.parametrize("product_head", [True, False])
def test_td3_actor_gradient_through_q1_written_out_is_autograds(product_head):
    """TD3's actor gradient through Q1 equals autograd's and leaves the critic's alone."""
    # TD3's actor loss -mean Q1(s, mu(s)), the critic's weights fixed: the written-out
    # gradient reaches the actor's parameters exactly as autograd's, and none the critic's
    from rl_training.trainers.networks import TwinCritic
    from rl_training.trainers.optim import flatten_parameters
    from rl_training.trainers.td3 import DeterministicActor

    torch.manual_seed(5)
    actor = DeterministicActor(3, 2, (16, 8))
    critic = TwinCritic(3, 2, (16, 8), product_head=product_head)
    actor_flat, critic_flat = flatten_parameters([actor]), flatten_parameters([critic])
    obs = torch.randn(64, 3)

    action, actor_inputs = actor.forward_saving(obs)
    torch.testing.assert_close(action, actor(obs))
    q1, critic_inputs = critic.q1_saving(obs, action)
    torch.testing.assert_close(q1, critic(obs, action)[0])
    grad_action = critic.q1_action_grad(critic_inputs, torch.full_like(q1, -1.0 / 64))
    assert grad_action.shape == (64, 2)
    actor.backward_(actor_inputs, action, grad_action)
    written = actor_flat.grad.clone()
    assert written.abs().sum() > 0
    assert critic_flat.grad.abs().sum() == 0  # the critic's weights are held fixed

    actor_flat.grad.zero_()
    (-critic(obs, actor(obs), detach=True)[0].mean()).backward()
    torch.testing.assert_close(written, actor_flat.grad)
    assert critic_flat.grad.abs().sum() == 0


@pytest.mark.parametrize("kind", ["mlp", "ensemble"])
def test_forwards_outside_autograd_reuse_scratch_without_touching_results(kind):
    """Outside autograd the hidden layers write into tensors kept from call to call:
    the values are autograd's, results handed out are never overwritten by a later
    call (of another batch size, or after inference mode), and a second call's hidden
    outputs are the first call's memory."""
    from rl_training.trainers.networks import MLP

    torch.manual_seed(3)
    net = (
        MLP(5, (16, 8), 3, activation=torch.relu)
        if kind == "mlp"
        else EnsembleMLP(2, 5, (16, 8), 1)
    )
    x, x2, y = torch.randn(32, 5), torch.randn(32, 5), torch.randn(7, 5)
    want_x, want_x2, want_y = (net(v).detach() for v in (x, x2, y))  # autograd: no scratch
    assert not net.scratch._tensors
    with torch.no_grad():
        got_x = net(x)
        kept = {key: t.data_ptr() for key, t in net.scratch._tensors.items()}
        assert kept  # the hidden outputs went to scratch
        got_x2 = net(x2)  # the same shape: the same scratch tensors
        got_y = net(y)
        got_x_again = net(x)
    with torch.inference_mode():  # not reusable: tensors made here stay read-only after
        got_inference = net(x)
    with torch.no_grad():
        after_inference = net(x)
    for got in (got_x, got_x_again, got_inference, after_inference):
        torch.testing.assert_close(got, want_x, rtol=0, atol=0)
    torch.testing.assert_close(got_x2, want_x2, rtol=0, atol=0)
    torch.testing.assert_close(got_y, want_y, rtol=0, atol=0)
    assert all(net.scratch._tensors[key].data_ptr() == ptr for key, ptr in kept.items())


def test_sac_actor_gradient_through_both_critics_written_out_is_autograds():
    """SAC's actor gradient through min(Q1, Q2) equals autograd's and leaves the critics' alone."""
    # SAC's actor loss mean(alpha logp - min(Q1, Q2)) at a sampled action, the critics'
    # weights fixed: the written-out gradient (through the smaller twin of each sample,
    # the tanh squashing, the sample and the log_std clamp) is autograd's, the same
    # draws are taken, and the critics' gradient is left alone
    from rl_training.trainers.networks import TwinCritic
    from rl_training.trainers.optim import flatten_parameters
    from rl_training.trainers.sac import SquashedGaussianActor

    torch.manual_seed(6)
    actor = SquashedGaussianActor(3, 2, (16, 8))
    critic = TwinCritic(3, 2, (16, 8), product_head=True)
    with torch.no_grad():  # some log_std outside the clamp, to check its gradient mask
        actor.net.linears[-1].bias[2:] = torch.tensor([4.0, -1.0])
    actor_flat, critic_flat = flatten_parameters([actor]), flatten_parameters([critic])
    obs, alpha = torch.randn(64, 3), torch.tensor(0.3)

    action, logp, saved = actor.forward_saving(obs, torch.Generator().manual_seed(0))
    want_action, want_logp = actor(obs, torch.Generator().manual_seed(0))
    torch.testing.assert_close(action, want_action.detach())
    torch.testing.assert_close(logp, want_logp.detach())
    assert (saved.log_std_raw > 2.0).any()
    q, inputs = critic.forward_saving(obs, action)
    smaller = q.min(0).indices
    grad_q = torch.zeros_like(q).scatter_(0, smaller.unsqueeze(0), -1.0 / 64)
    actor.backward_(saved, critic.action_grad(inputs, grad_q), alpha / 64)
    written = actor_flat.grad.clone()
    assert written.abs().sum() > 0

    actor_flat.grad.zero_()
    q_pi = critic(obs, want_action, detach=True).min(0).values
    (alpha * want_logp - q_pi).mean().backward()
    torch.testing.assert_close(written, actor_flat.grad)
    assert critic_flat.grad.abs().sum() == 0
