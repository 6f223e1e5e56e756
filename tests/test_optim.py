"""FlatOptimizer against torch.optim: the same update rules, the same state layout."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rl_training.trainers.optim import FlatOptimizer


def _nets(seed: int) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(seed)
    ours = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 3))
    ref = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 3))
    ref.load_state_dict(ours.state_dict())
    return ours, ref


def _loss(net: nn.Module, step: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(100 + step)
    x, y = torch.randn(32, 5, generator=g), torch.randn(32, 3, generator=g)
    return (net(x) - y).square().mean()


def _flat(net: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in net.parameters()])


CASES = {
    # (ours, torch.optim reference, exact): the fused Adam kernel is torch's own
    "adam": (
        {"lr": 3e-3, "eps": 1e-5},
        lambda params: torch.optim.Adam(params, lr=3e-3, eps=1e-5, fused=True),
        True,
    ),
    "rmsprop": (
        {"lr": 7e-4, "eps": 1e-5, "alpha": 0.99},
        lambda params: torch.optim.RMSprop(params, lr=7e-4, eps=1e-5, alpha=0.99, foreach=False),
        True,
    ),
}


@pytest.mark.parametrize("algorithm", sorted(CASES))
def test_steps_as_torch_optim_does(algorithm):
    """FlatOptimizer takes bit-for-bit the steps of torch.optim's Adam and RMSprop."""
    kwargs, make_ref, _ = CASES[algorithm]
    ours, ref = _nets(0)
    opt = FlatOptimizer([ours], algorithm, **kwargs)
    ref_opt = make_ref(ref.parameters())
    before = _flat(ours).clone()
    for step in range(20):
        opt.step(_loss(ours, step), max_grad_norm=None)
        ref_opt.zero_grad()
        _loss(ref, step).backward()
        ref_opt.step()
        torch.testing.assert_close(_flat(ours), _flat(ref), rtol=0, atol=0)
    assert not torch.equal(_flat(ours), before)  # it moved


def test_adam_without_the_fused_kernel_follows_the_reference_rule():
    """Adam on devices without the fused kernel follows torch.optim.Adam's rule."""
    ours, ref = _nets(1)
    opt = FlatOptimizer([ours], "adam", lr=1e-2)
    opt._fused = False  # the rule used on devices without torch's fused kernel
    ref_opt = torch.optim.Adam(ref.parameters(), lr=1e-2, foreach=False)
    for step in range(20):
        opt.step(_loss(ours, step))
        ref_opt.zero_grad()
        _loss(ref, step).backward()
        ref_opt.step()
    torch.testing.assert_close(_flat(ours), _flat(ref), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("algorithm", sorted(CASES))
def test_state_round_trips_and_reads_torch_optims_state(algorithm):
    """The optimiser's state round-trips (torch.optim's layout); a resumed one steps alike."""
    kwargs, make_ref, _ = CASES[algorithm]
    ours, ref = _nets(2)
    opt = FlatOptimizer([ours], algorithm, **kwargs)
    assert opt.state_dict()["state"] == {}  # nothing before the first step
    for step in range(5):
        opt.step(_loss(ours, step))
    saved = opt.state_dict()
    assert float(saved["state"][0]["step"]) == 5.0
    assert saved["param_groups"][0]["lr"] == kwargs["lr"]

    # A fresh optimizer from that state takes the same next step as the original.
    twin, _ = _nets(2)
    twin.load_state_dict(ours.state_dict())
    resumed = FlatOptimizer([twin], algorithm, **kwargs)
    resumed.load_state_dict(saved)
    opt.step(_loss(ours, 5))
    resumed.step(_loss(twin, 5))
    assert torch.equal(_flat(ours), _flat(twin))

    # torch.optim's state over one flat parameter (what checkpoints held before) loads too.
    flat = nn.Parameter(_flat(ref).clone())
    torch_opt = make_ref([flat])
    for step in range(3):
        flat.grad = torch.randn(flat.shape, generator=torch.Generator().manual_seed(step))
        torch_opt.step()
    third, _ = _nets(2)
    from_torch = FlatOptimizer([third], algorithm, **kwargs)
    from_torch.load_state_dict(torch_opt.state_dict())
    assert from_torch.state_dict()["state"][0]["step"] == 3.0
    for name, value in torch_opt.state_dict()["state"][0].items():
        assert torch.equal(from_torch.state_dict()["state"][0][name], value)


def test_bad_algorithm_and_mismatched_state_are_refused():
    """An unknown optimiser, or a state of another kind or size, is refused by name."""
    net, _ = _nets(3)
    with pytest.raises(ValueError, match="'sgd' is not one of 'adam', 'rmsprop'"):
        FlatOptimizer([net], "sgd", lr=0.1)  # type: ignore[arg-type]
    adam = FlatOptimizer([net], "adam", lr=0.1)
    adam.step(_loss(net, 0))
    other, _ = _nets(3)
    rms = FlatOptimizer([other], "rmsprop", lr=0.1)
    with pytest.raises(ValueError, match="no square_avg: not rmsprop's"):
        rms.load_state_dict(adam.state_dict())
    small = FlatOptimizer([nn.Linear(2, 2)], "adam", lr=0.1)
    with pytest.raises(ValueError, match=r"exp_avg has \d+ values; these parameters have 6"):
        small.load_state_dict(adam.state_dict())
