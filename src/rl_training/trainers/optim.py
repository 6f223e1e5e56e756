"""Optimisation over flat parameters: one tensor per network, schedules, Polyak updates."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from rl_training.runtime.distributed import Replicas


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
    offset = 0
    for p in params:
        n = p.numel()
        p.data = flat.data[offset : offset + n].view_as(p)
        offset += n
    if with_grad:
        attach_gradient(modules, flat, torch.zeros_like(flat))
    return flat


def attach_gradient(modules: Sequence[nn.Module], flat: nn.Parameter, grad: torch.Tensor) -> None:
    """Make ``grad`` the gradient of ``flat`` (see :func:`flatten_parameters`) and each
    parameter's ``.grad`` a view into it."""
    flat.grad = grad
    offset = 0
    for p in (p for module in modules for p in module.parameters()):
        n = p.numel()
        p.grad = grad[offset : offset + n].view_as(p)
        offset += n


class FlatOptimizer:
    """An optimizer over :func:`flatten_parameters` of some modules.

    Args:
        modules: Whose parameters it owns.
        optimizer: ``torch.optim`` class, e.g. ``torch.optim.Adam`` (fused where available).
        replicas: Under torchrun: every step averages the gradient over the ranks in
            one all-reduce before clipping, so every rank takes the same step.
        **kwargs: The optimizer's arguments (``lr``, ``eps``...).
    """

    def __init__(
        self,
        modules: Sequence[nn.Module],
        optimizer: type[torch.optim.Optimizer],
        *,
        replicas: Replicas | None = None,
        **kwargs: Any,
    ) -> None:
        self.param = flatten_parameters(modules, with_grad=False)
        """All the parameters, flat; ``.grad`` is the flat gradient."""
        n = self.param.numel()
        # With replicas, one spare element after the gradient carries the stop requests
        # in the same all-reduce.
        self._grad = self.param.new_zeros(n + (1 if replicas is not None else 0))
        attach_gradient(modules, self.param, self._grad[:n])
        self._replicas = replicas
        if optimizer is torch.optim.Adam and self.param.device.type in ("cpu", "cuda"):
            kwargs.setdefault("fused", True)
        self.optimizer = optimizer([self.param], **kwargs)

    def set_lr(self, lr: float) -> None:
        """Set the learning rate."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def step(self, loss: torch.Tensor, max_grad_norm: float | None = None) -> None:
        """Zero the gradients, backpropagate ``loss``, average it over the replicas,
        clip the global norm, step."""
        self._grad.zero_()
        loss.backward()  # type: ignore[no-untyped-call]
        if self._replicas is not None:
            self._replicas.average_gradient_(self._grad)
        grad = self.param.grad
        assert grad is not None  # attached at construction and never released
        if max_grad_norm is not None:
            norm = torch.linalg.vector_norm(grad)
            grad.mul_(torch.clamp(max_grad_norm / (norm + 1e-6), max=1.0))
        self.optimizer.step()

    def state_dict(self) -> dict[str, Any]:
        """The optimizer's state (moments, step counts, learning rate); the parameters
        themselves belong to the modules."""
        return self.optimizer.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.optimizer.load_state_dict(dict(state))


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
