"""Optimisation over flat parameters: one tensor per network, schedules, Polyak updates."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

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

    Convolution weights (4-D) are laid out channels last, as their gradients: oneDNN's
    convolutions take and give that layout ~1.5x faster on the CPU (README,
    "Performance notes").

    Call it after the modules are on their device: moving them would break the views.
    """
    params = [p for module in modules for p in module.parameters()]
    flat = nn.Parameter(torch.cat([_in_layout(p.detach()).reshape(-1) for p in params]))
    offset = 0
    for p in params:
        n = p.numel()
        p.data = _view(flat.data, offset, p)
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
        p.grad = _view(grad, offset, p)
        offset += n


def _in_layout(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` with its elements in the flat buffer's order (4-D: channels last)."""
    return tensor.permute(0, 2, 3, 1) if tensor.dim() == 4 else tensor


def _view(flat: torch.Tensor, offset: int, like: torch.Tensor) -> torch.Tensor:
    """The view of ``flat`` from ``offset`` shaped as ``like`` (4-D: channels-last strides)."""
    part = flat[offset : offset + like.numel()]
    if like.dim() == 4:
        out, channels, height, width = like.shape
        return part.view(out, height, width, channels).permute(0, 3, 1, 2)
    return part.view_as(like)


ADAM_BETAS = (0.9, 0.999)
"""Adam's moment decay rates (PyTorch's and SB3's defaults)."""


class FlatOptimizer:
    """Adam or RMSprop over :func:`flatten_parameters` of some modules.

    The update rules of ``torch.optim.Adam`` (its fused kernel where the device has
    one) and ``torch.optim.RMSprop`` (no momentum, not centred), applied to one flat
    tensor without ``torch.optim.Optimizer`` around them: that wrapper costs more per
    step than the arithmetic of these small networks, and building the first one
    imports ``torch._dynamo`` (about a second). ``state_dict`` has
    ``torch.optim``'s layout, so either can read the other's.

    Args:
        modules: Whose parameters it owns.
        algorithm: ``"adam"`` or ``"rmsprop"``.
        lr: Step size.
        eps: Added to the denominator (default: 1e-8 for Adam, PyTorch's; A2C passes
            SB3's 1e-5 for RMSprop).
        alpha: RMSprop's squared-gradient decay.
        replicas: Under torchrun: every step averages the gradient over the ranks in
            one all-reduce before clipping, so every rank takes the same step.
    """

    def __init__(
        self,
        modules: Sequence[nn.Module],
        algorithm: Literal["adam", "rmsprop"],
        *,
        lr: float,
        eps: float = 1e-8,
        alpha: float = 0.99,
        replicas: Replicas | None = None,
    ) -> None:
        if algorithm not in ("adam", "rmsprop"):
            raise ValueError(f"optimizer {algorithm!r} is not one of 'adam', 'rmsprop'")
        self.algorithm = algorithm
        self.param = flatten_parameters(modules, with_grad=False)
        """All the parameters, flat; ``.grad`` is the flat gradient."""
        n = self.param.numel()
        # With replicas, one spare element after the gradient carries the stop requests
        # in the same all-reduce.
        self._grad = self.param.new_zeros(n + (1 if replicas is not None else 0))
        attach_gradient(modules, self.param, self._grad[:n])
        self._replicas = replicas
        self.lr, self.eps, self.alpha = lr, eps, alpha
        self._moment_names = ("exp_avg", "exp_avg_sq") if algorithm == "adam" else ("square_avg",)
        """The moments' names in ``torch.optim``'s state."""
        self._moments = [self.param.new_zeros(n) for _ in self._moment_names]
        self._step = self.param.new_zeros(())
        """Steps taken, a float tensor on the device (the fused kernel reads it there)."""
        self._steps_taken = 0
        """``_step`` on the host: read without waiting for the device."""
        self._fused = (
            algorithm == "adam"
            and hasattr(torch, "_fused_adam_")
            and self.param.device.type in ("cpu", "cuda")
        )

    def set_lr(self, lr: float) -> None:
        """Set the learning rate."""
        self.lr = lr

    def zero_grad(self) -> None:
        """Zero the gradients (before a ``backward`` that :meth:`apply_gradient` applies)."""
        self._grad.zero_()

    def step(self, loss: torch.Tensor, max_grad_norm: float | None = None) -> None:
        """Zero the gradients, backpropagate ``loss``, average it over the replicas,
        clip the global norm, update the parameters."""
        self._grad.zero_()
        loss.backward()  # type: ignore[no-untyped-call]
        self.apply_gradient(max_grad_norm)

    def apply_gradient(self, max_grad_norm: float | None = None) -> None:
        """Step with the gradient already in ``param.grad`` (written there by hand):
        average it over the replicas, clip the global norm, update the parameters."""
        if self._replicas is not None:
            self._replicas.average_gradient_(self._grad)
        grad = self.param.grad
        assert grad is not None  # attached at construction and never released
        if max_grad_norm is not None:
            norm = torch.linalg.vector_norm(grad)
            grad.mul_(torch.clamp(max_grad_norm / (norm + 1e-6), max=1.0))
        with torch.no_grad():
            self._update(self.param.data, grad)

    def _update(self, param: torch.Tensor, grad: torch.Tensor) -> None:
        self._step.add_(1)
        self._steps_taken += 1
        if self.algorithm == "rmsprop":  # torch.optim.RMSprop's single-tensor rule
            (square_avg,) = self._moments
            square_avg.mul_(self.alpha).addcmul_(grad, grad, value=1 - self.alpha)
            param.addcdiv_(grad, square_avg.sqrt().add_(self.eps), value=-self.lr)
            return
        exp_avg, exp_avg_sq = self._moments
        beta1, beta2 = ADAM_BETAS
        if self._fused:
            torch._fused_adam_(
                [param], [grad], [exp_avg], [exp_avg_sq], [], [self._step],
                lr=self.lr, beta1=beta1, beta2=beta2, weight_decay=0.0, eps=self.eps,
                amsgrad=False, maximize=False,
            )  # fmt: skip
            return
        # torch.optim.Adam's single-tensor rule, for devices without the fused kernel
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        step = self._steps_taken
        bias_correction2_sqrt = math.sqrt(1 - beta2**step)
        denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(self.eps)
        param.addcdiv_(exp_avg, denom, value=-self.lr / (1 - beta1**step))

    def state_dict(self) -> dict[str, Any]:
        """Moments, step count and learning rate, in ``torch.optim``'s layout; the
        parameters themselves belong to the modules."""
        state = {"step": self._step.clone()}
        moments = zip(self._moment_names, self._moments, strict=True)
        state.update({name: moment.clone() for name, moment in moments})
        group: dict[str, Any] = {"lr": self.lr, "eps": self.eps, "weight_decay": 0.0}
        if self.algorithm == "adam":
            group.update(betas=ADAM_BETAS, amsgrad=False, maximize=False)
        else:
            group.update(alpha=self.alpha, momentum=0.0, centered=False, maximize=False)
        return {
            "state": {0: state} if self._steps_taken else {},
            "param_groups": [{**group, "params": [0]}],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` (or a ``torch.optim`` optimizer's over the same
        flat parameter).

        Raises:
            ValueError: the state is another algorithm's or another size's.
        """
        self.lr = float(state["param_groups"][0]["lr"])
        tensors = state["state"].get(0)
        names = self._moment_names
        with torch.no_grad():
            if not tensors:  # saved before the first step
                self._step.zero_()
                self._steps_taken = 0
                for moment in self._moments:
                    moment.zero_()
                return
            missing = [name for name in names if name not in tensors]
            if missing:
                raise ValueError(
                    f"optimizer state has no {', '.join(missing)}: not {self.algorithm}'s"
                )
            for name, moment in zip(names, self._moments, strict=True):
                if tensors[name].numel() != moment.numel():
                    raise ValueError(
                        f"optimizer state {name} has {tensors[name].numel()} values; "
                        f"these parameters have {moment.numel()}"
                    )
                moment.copy_(tensors[name].reshape(moment.shape))
            self._step.copy_(torch.as_tensor(tensors["step"], dtype=self._step.dtype))
            self._steps_taken = int(self._step.item())


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
