"""Networks: MLPs, twin critics as one batched ensemble, the on-policy actor-critic.

Algorithm-specific heads (SAC's squashed Gaussian actor, TD3's deterministic actor,
DQN's Q-network) stay with their algorithm; what two algorithms share is here.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from rl_training.hyperparams import PRECISIONS
from rl_training.trainers.observations import NatureCNN, layout

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def layer_init(layer: nn.Linear, gain: float = math.sqrt(2), bias: float = 0.0) -> nn.Linear:
    """Orthogonal weights with ``gain`` and constant bias, as in SB3 and CleanRL."""
    nn.init.orthogonal_(layer.weight, gain)
    nn.init.constant_(layer.bias, bias)
    return layer


Activation = Callable[[torch.Tensor], torch.Tensor]

_IN_PLACE: dict[Activation, Activation] = {torch.relu: torch.relu_, torch.tanh: torch.tanh_}
"""Each activation applied in place, to the fresh output of a matmul: the same values,
without a second tensor of the layer's size. Allocations of these sizes (up to ~1 MB)
are what glibc's allocator hands back to the kernel and refaults page by page."""

_BACKWARD_FROM_OUTPUT: dict[Activation, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    torch.relu: lambda grad, y: torch.ops.aten.threshold_backward.grad_input(
        grad, y, 0.0, grad_input=grad
    ),
    torch.tanh: lambda grad, y: torch.ops.aten.tanh_backward.grad_input(grad, y, grad_input=grad),
}
"""An activation's backward from its output ``y`` (autograd's own kernels), written
into ``grad`` (a matmul output of its own), for :meth:`MLP.backward_`."""


class _Scratch:
    """Hidden-layer tensors a network writes into again on every call, by role, layer
    and shape, instead of allocating them anew.

    A training step's activations (up to ~1 MB a layer: TD3's 2 x 256 x 400) would be
    freed and allocated again every step, and glibc hands such memory back to the
    kernel, so the next step faults it in page by page (README, "Performance notes").
    Tensors that stay allocated fault nothing. Only for work outside autograd (``out=``
    cannot be differentiated): a tensor from here is valid until the same role runs
    again, so results handed to callers are never taken from here.
    """

    def __init__(self) -> None:
        self._tensors: dict[tuple[Any, ...], torch.Tensor] = {}

    def __call__(
        self, role: str, layer: int, shape: torch.Size, like: torch.Tensor
    ) -> torch.Tensor:
        key = (role, layer, shape, like.dtype, like.device)
        tensor = self._tensors.get(key)
        if tensor is None:
            tensor = self._tensors[key] = torch.empty(shape, dtype=like.dtype, device=like.device)
        return tensor


COMPUTE_DTYPES: dict[str, torch.dtype] = dict(
    zip(PRECISIONS, (torch.float32, torch.bfloat16), strict=True)
)
"""The dtype of the hidden layers' matmuls for each of the ``precision`` hyperparameter's
values (:data:`rl_training.hyperparams.PRECISIONS`, their one list)."""


class PrecisionWarning(RuntimeWarning):
    """``precision="bf16"`` on a CPU that only emulates bfloat16 (many times slower)."""


def cpu_runs_bf16() -> bool | None:
    """Whether this CPU runs bfloat16 matmuls and convolutions in oneDNN's own kernels
    (AVX512 or AVX2-VNNI-2; natively with AVX512-BF16 or AMX), as torch tells it;
    ``None`` where torch cannot say."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return None


def set_precision(module: nn.Module, precision: str) -> None:
    """Run the hidden layers of every :class:`MLP` and :class:`EnsembleMLP`, and every
    :class:`NatureCNN`, in ``module`` in ``precision`` (a key of :data:`COMPUTE_DTYPES`).

    ``"bf16"``: each hidden layer casts its weights (fp32 masters, which the optimiser
    updates) and its input to bfloat16 and runs its matmul there, as
    ``torch.autocast`` does (the CNN runs under ``torch.autocast`` itself); the output
    heads, the losses and every gradient the optimiser sees stay float32. About twice
    the matmul throughput on CPUs with AVX512-BF16 or AMX (and on GPUs), at
    bfloat16's 8-bit mantissa. On a CPU without oneDNN bfloat16 kernels
    (:func:`cpu_runs_bf16` false), ``"bf16"`` warns once (:class:`PrecisionWarning`).
    """
    dtype = COMPUTE_DTYPES[precision]
    on_cpu = any(p.device.type == "cpu" for p in module.parameters())
    if dtype == torch.bfloat16 and on_cpu and cpu_runs_bf16() is False:
        warnings.warn(
            "precision='bf16': this CPU has no bfloat16 kernels in oneDNN (neither AVX512 "
            "nor AVX2-VNNI-2), so bfloat16 runs emulated, many times slower than 'fp32' "
            "(10-17x measured in the Nature CNN on an AVX2-only CPU); train with "
            "precision='fp32' here",
            PrecisionWarning,
            stacklevel=1,  # here, not at the caller: once per process
        )
    for part in module.modules():
        if isinstance(part, (MLP, EnsembleMLP, NatureCNN)):
            part.compute_dtype = dtype


def _as(tensor: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``tensor`` in ``like``'s dtype (itself when it already is)."""
    return tensor if tensor.dtype == like.dtype else tensor.to(like.dtype)


def _reusable() -> bool:
    """Whether the call may write into :class:`_Scratch` tensors: outside autograd, and
    outside inference mode (tensors made there cannot be written to after it)."""
    return not torch.is_grad_enabled() and not torch.is_inference_mode_enabled()


class MLP(nn.Module):
    """``Linear -> activation`` per hidden width, then a linear head.

    ``forward`` calls ``torch.nn.functional.linear`` on the layers' own parameters
    rather than each submodule: with layers this small, per-module dispatch costs
    as much as the arithmetic. The parameters and ``state_dict`` are those of an
    ``nn.Sequential`` of ``nn.Linear`` layers.
    """

    def __init__(
        self,
        in_dim: int,
        hidden: Sequence[int],
        out_dim: int,
        *,
        activation: Callable[[torch.Tensor], torch.Tensor] = torch.tanh,
        out_gain: float | None = 1.0,
    ) -> None:
        super().__init__()
        widths = [in_dim, *hidden, out_dim]
        #: The linear layers, input first (the same modules as ``layers``, typed).
        self.linears = [nn.Linear(a, b) for a, b in zip(widths, widths[1:], strict=False)]
        self.layers = nn.ModuleList(self.linears)
        if out_gain is not None:  # orthogonal everywhere; else PyTorch's default init
            for layer in self.linears[:-1]:
                layer_init(layer)
            layer_init(self.linears[-1], out_gain)
        self.activation = activation
        self.activation_ = _IN_PLACE.get(activation, activation)
        self.scratch = _Scratch()
        self.compute_dtype = torch.float32
        """The hidden layers' matmul dtype (:func:`set_precision`); the head's is float32."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        *hidden, head = self.linears
        if x.dim() == 2 and _reusable():
            x = self._hidden(x, "forward", None)
        else:
            linear, activation = nn.functional.linear, self.activation_
            x = x.to(self.compute_dtype)
            for layer in hidden:
                x = activation(linear(x, _as(layer.weight, x), _as(layer.bias, x)))
        return nn.functional.linear(_as(x, head.weight), head.weight, head.bias)

    def _hidden(
        self, x: torch.Tensor, role: str, inputs: list[torch.Tensor] | None
    ) -> torch.Tensor:
        """The hidden layers outside autograd, their outputs in :attr:`scratch`; each
        layer's input appended to ``inputs``, the last hidden output returned."""
        activation = self.activation_
        x = x.to(self.compute_dtype)
        for i, layer in enumerate(self.linears[:-1]):
            if inputs is not None:
                inputs.append(x)
            out = self.scratch(role, i, torch.Size((x.shape[0], layer.out_features)), x)
            w, b = _as(layer.weight, x), _as(layer.bias, x)
            x = activation(torch.addmm(b, x, w.t(), out=out))
        return x

    def forward_saving(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The output of a 2-D batch and each layer's input, for :meth:`backward_`.

        Builds no autograd graph: with :meth:`backward_` this is a gradient step
        written out, in about half the operations autograd takes for these layers.
        """
        inputs: list[torch.Tensor] = []
        with torch.no_grad():
            head = self.linears[-1]
            x = _as(self._hidden(x, "saving", inputs), head.weight)
            inputs.append(x)
            return torch.addmm(head.bias, x, head.weight.t()), inputs

    def backward_(self, inputs: Sequence[torch.Tensor], grad_out: torch.Tensor) -> None:
        """Write the parameters' gradients (into their ``.grad``, which must exist)
        from ``grad_out``, the loss's gradient at the output of :meth:`forward_saving`
        whose layer inputs are ``inputs``."""
        activation_backward = _BACKWARD_FROM_OUTPUT[self.activation]
        g = grad_out
        with torch.no_grad():
            for i in range(len(self.linears) - 1, -1, -1):
                layer, x = self.linears[i], inputs[i]
                w_grad, b_grad = layer.weight.grad, layer.bias.grad
                assert w_grad is not None and b_grad is not None
                g = _as(g, x)  # each layer runs in its input's dtype
                if x.dtype == w_grad.dtype:
                    torch.mm(g.t(), x, out=w_grad)
                else:
                    w_grad.copy_(torch.mm(g.t(), x))  # to the fp32 gradient
                torch.sum(g, 0, dtype=b_grad.dtype, out=b_grad)
                if i > 0:  # x is the previous layer's activation output
                    out = self.scratch("backward", i, x.shape, x)
                    g = activation_backward(torch.mm(g, _as(layer.weight, x), out=out), x)


def mlp(
    in_dim: int,
    hidden: Sequence[int],
    out_dim: int,
    *,
    activation: Callable[[torch.Tensor], torch.Tensor] = torch.tanh,
    out_gain: float | None = 1.0,
) -> MLP:
    """An :class:`MLP`: Tanh and orthogonal init by default (on-policy trainers);
    ``out_gain=None`` keeps PyTorch's default init (the off-policy trainers' choice)."""
    return MLP(in_dim, hidden, out_dim, activation=activation, out_gain=out_gain)


class EnsembleMLP(nn.Module):
    """``n`` independent MLPs on one input, run together with batched matmuls.

    The twin critics of SAC and TD3: one ``baddbmm`` per layer for both instead of
    one ``linear`` each, which halves the kernel launches and lets a matmul use
    both cores. Each member is initialised like ``nn.Linear`` (uniform in
    ``+-1/sqrt(fan_in)``) and has its own weights.
    """

    def __init__(
        self,
        n: int,
        in_dim: int,
        hidden: Sequence[int],
        out_dim: int,
        *,
        activation: Callable[[torch.Tensor], torch.Tensor] = torch.relu,
        product_head: bool = False,
    ) -> None:
        super().__init__()
        widths = [in_dim, *hidden, out_dim]
        self.n = n
        # A head of one output as a broadcast product and a sum: a batched matmul of
        # that shape costs ~4x as much on the CPU (~90 us for 2 x 256 x 300), 2x with
        # its backward. Same values up to float rounding.
        self.product_head = product_head and out_dim == 1
        #: Per layer: weights ``(n, in, out)`` and biases ``(n, 1, out)``.
        self.weights = [
            nn.Parameter(torch.empty(n, a, b)) for a, b in zip(widths, widths[1:], strict=False)
        ]
        self.biases = [nn.Parameter(torch.empty(n, 1, b)) for b in widths[1:]]
        self._params = nn.ParameterList([*self.weights, *self.biases])
        for w, b in zip(self.weights, self.biases, strict=True):
            bound = 1.0 / math.sqrt(w.shape[1])
            nn.init.uniform_(w, -bound, bound)
            nn.init.uniform_(b, -bound, bound)
        self.activation = activation
        self.activation_ = _IN_PLACE.get(activation, activation)
        self.scratch = _Scratch()
        self.compute_dtype = torch.float32
        """The hidden layers' matmul dtype (:func:`set_precision`); the head's is float32."""

    def forward(self, x: torch.Tensor, *, detach: bool = False) -> torch.Tensor:
        """Every member's output, shape ``(n, batch, out)``.

        ``detach=True`` uses the weights without tracking them, for a loss that must
        move only the input (the actor's loss through the critics).
        """
        return self._layers(x, detach, None, "forward" if _reusable() else None)

    def forward_saving(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """:meth:`forward` without an autograd graph, and each layer's input, for
        :meth:`backward_` (as :meth:`MLP.forward_saving`)."""
        inputs: list[torch.Tensor] = []
        with torch.no_grad():
            return self._layers(x, False, inputs, "saving"), inputs

    def _layers(
        self,
        x: torch.Tensor,
        detach: bool,
        inputs: list[torch.Tensor] | None,
        role: str | None,
    ) -> torch.Tensor:
        """The layers; the hidden outputs in :attr:`scratch` under ``role`` if given."""
        h = x.to(self.compute_dtype).unsqueeze(0).expand(self.n, *x.shape)
        activation, last = self.activation_, len(self.weights) - 1
        for i, (weight, bias) in enumerate(zip(self.weights, self.biases, strict=True)):
            w, b = (weight.detach(), bias.detach()) if detach else (weight, bias)
            # the hidden layers in the compute dtype, the head in the weights' own
            h = _as(h, w) if i == last else h
            w, b = _as(w, h), _as(b, h)
            if inputs is not None:
                inputs.append(h)
            if i < last:
                out = None
                if role is not None:
                    out = self.scratch(role, i, torch.Size((self.n, h.shape[1], w.shape[2])), h)
                h = activation(torch.baddbmm(b, h, w, out=out))
            elif self.product_head:
                h = (h * w.transpose(1, 2)).sum(-1, keepdim=True) + b
            else:
                h = torch.baddbmm(b, h, w)
        return h

    def backward_(self, inputs: Sequence[torch.Tensor], grad_out: torch.Tensor) -> None:
        """Write every member's gradients (into the parameters' ``.grad``, which must
        exist) from ``grad_out`` ``(n, batch, out)``, the loss's gradient at the output
        of :meth:`forward_saving` whose layer inputs are ``inputs``.

        The kernels autograd runs for :meth:`forward`, without its bookkeeping (the
        graph, saved tensors, fresh gradient buffers), which costs more than the
        kernels on networks of this size.
        """
        activation_backward = _BACKWARD_FROM_OUTPUT[self.activation]
        g, last = grad_out, len(self.weights) - 1
        with torch.no_grad():
            for i in range(last, -1, -1):
                w, b, x = self.weights[i], self.biases[i], inputs[i]
                assert w.grad is not None and b.grad is not None
                g = _as(g, x)  # each layer runs in its input's dtype
                product = i == last and self.product_head  # h @ w as a product and a sum
                if product:
                    w.grad.copy_((x * g).sum(1).unsqueeze(-1))
                elif x.dtype == w.dtype:
                    torch.bmm(x.transpose(1, 2), g, out=w.grad)
                else:
                    w.grad.copy_(torch.bmm(x.transpose(1, 2), g))
                torch.sum(g, 1, keepdim=True, dtype=b.grad.dtype, out=b.grad)
                if i > 0:  # x is the previous layer's activation output
                    g = activation_backward(self._to_input(i, g, x, "backward"), x)

    def _to_input(self, i: int, g: torch.Tensor, x: torch.Tensor, role: str) -> torch.Tensor:
        """The gradient ``g`` at layer ``i``'s output taken to its input ``x`` (before
        the previous layer's activation), into :attr:`scratch` under ``role``."""
        g = _as(g, x)
        w = _as(self.weights[i], x).transpose(1, 2)
        if i == len(self.weights) - 1 and self.product_head:
            return g * w
        return torch.bmm(g, w, out=self.scratch(role, i, x.shape, x))

    def input_grad(self, inputs: Sequence[torch.Tensor], grad_out: torch.Tensor) -> torch.Tensor:
        """The gradient at the input ``(batch, in)`` of :meth:`forward_saving` from
        ``grad_out`` ``(n, batch, out)`` at its output, summed over the members, the
        weights held fixed (nothing is written to their ``.grad``): how a loss through
        the critics moves the action (SAC's actor loss)."""
        activation_backward = _BACKWARD_FROM_OUTPUT[self.activation]
        g = grad_out
        with torch.no_grad():
            for i in range(len(self.weights) - 1, -1, -1):
                g = self._to_input(i, g, inputs[i], "input backward")
                if i > 0:  # inputs[i] is the previous layer's activation output
                    g = activation_backward(g, inputs[i])
            # a new tensor (the scratch is not handed out), in the weights' dtype
            return g.sum(0, dtype=self.weights[0].dtype)

    def member_saving(self, x: torch.Tensor, index: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Member ``index`` alone, ``(batch, out)`` (no work spent on the others), without
        an autograd graph, and each layer's input, for :meth:`member_input_grad`."""
        inputs = []
        activation, last = self.activation_, len(self.weights) - 1
        with torch.no_grad():
            x = x.to(self.compute_dtype)
            for i, (weight, bias) in enumerate(zip(self.weights, self.biases, strict=True)):
                x = _as(x, weight) if i == last else x  # the head in the weights' dtype
                w, b = _as(weight[index], x), _as(bias[index, 0], x)
                inputs.append(x)
                if i < last:
                    out = self.scratch("member", i, torch.Size((x.shape[0], w.shape[1])), x)
                    x = activation(torch.addmm(b, x, w, out=out))
                else:
                    x = torch.addmm(b, x, w)
        return x, inputs

    def member_input_grad(
        self, inputs: Sequence[torch.Tensor], index: int, grad_out: torch.Tensor
    ) -> torch.Tensor:
        """The gradient at the input of :meth:`member_saving` from ``grad_out`` at its
        output, the weights held fixed (nothing is written to their ``.grad``): how a
        loss through a critic moves the action (TD3's actor loss)."""
        activation_backward = _BACKWARD_FROM_OUTPUT[self.activation]
        g = grad_out
        with torch.no_grad():
            for i in range(len(self.weights) - 1, -1, -1):
                g = _as(g, inputs[i])
                w = _as(self.weights[i][index], g).t()
                if i > 0:  # inputs[i] is the previous layer's activation output
                    out = self.scratch("member backward", i, inputs[i].shape, g)
                    g = activation_backward(torch.mm(g, w, out=out), inputs[i])
                else:
                    g = torch.mm(g, w)
        return _as(g, self.weights[0])


class TwinCritic(nn.Module):
    """Q1(s, a), Q2(s, a) as one :class:`EnsembleMLP` of two members.

    ``product_head``: the Q head as a broadcast product and a sum, the same values up
    to float rounding and faster on the CPU (SAC uses it). TD3 keeps the batched
    matmul: the rounding changed which seeds learn (README, "Performance notes").
    """

    def __init__(
        self,
        obs_size: int,
        action_size: int,
        net_arch: tuple[int, ...],
        *,
        product_head: bool = False,
    ) -> None:
        super().__init__()
        self.obs_size = obs_size
        self.q = EnsembleMLP(2, obs_size + action_size, net_arch, 1, product_head=product_head)

    def forward(
        self, obs: torch.Tensor, action: torch.Tensor, *, detach: bool = False
    ) -> torch.Tensor:
        """``(2, batch)`` Q-values."""
        q: torch.Tensor = self.q(torch.cat([obs, action], dim=-1), detach=detach)
        return q.squeeze(-1)

    def forward_saving(
        self, obs: torch.Tensor, action: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``(2, batch)`` Q-values without an autograd graph, and what :meth:`backward_`
        needs (see :meth:`EnsembleMLP.forward_saving`)."""
        q, inputs = self.q.forward_saving(torch.cat([obs, action], dim=-1))
        return q.squeeze(-1), inputs

    def backward_(self, inputs: Sequence[torch.Tensor], grad_q: torch.Tensor) -> None:
        """Write the gradients from ``grad_q`` ``(2, batch)``, the loss's gradient at the
        Q-values of :meth:`forward_saving`."""
        self.q.backward_(inputs, grad_q.unsqueeze(-1))

    def action_grad(self, inputs: Sequence[torch.Tensor], grad_q: torch.Tensor) -> torch.Tensor:
        """The gradient at the action of :meth:`forward_saving` from ``grad_q``
        ``(2, batch)`` at the Q-values, the critic's weights held fixed."""
        return self.q.input_grad(inputs, grad_q.unsqueeze(-1))[:, self.obs_size :]

    def q1_saving(
        self, obs: torch.Tensor, action: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Q1 alone, ``(batch,)`` (TD3's actor loss needs only it), without an autograd
        graph, and what :meth:`q1_action_grad` needs."""
        q, inputs = self.q.member_saving(torch.cat([obs, action], dim=-1), 0)
        return q.squeeze(-1), inputs

    def q1_action_grad(self, inputs: Sequence[torch.Tensor], grad_q: torch.Tensor) -> torch.Tensor:
        """The gradient at the action of :meth:`q1_saving` from ``grad_q`` ``(batch,)``
        at Q1, the critic's weights held fixed."""
        grad_in = self.q.member_input_grad(inputs, 0, grad_q.unsqueeze(-1))
        return grad_in[:, self.obs_size :]


class ActorCritic(nn.Module):
    """Policy and value function for a Box or Discrete action space (PPO, A2C).

    Separate actor and critic MLPs (Tanh, orthogonal init; policy head gain 0.01,
    value head gain 1), as in Stable-Baselines3's ``MlpPolicy``. Discrete actions
    take a categorical policy; Box actions a diagonal Gaussian with a
    state-independent ``log_std``, clipped to the action bounds only when sent to
    the environment. Log-probabilities and entropies are written out rather than
    built through ``torch.distributions``, whose per-call validation and object
    construction cost more than the tiny networks themselves.
    """

    low: torch.Tensor
    """Lower bounds of a Box action space (a buffer: it follows the module's device)."""
    high: torch.Tensor
    """Upper bounds of a Box action space."""

    def __init__(
        self,
        observation_space: gym.Space[Any],
        action_space: gym.Space[Any],
        net_arch: Sequence[int],
        log_std_init: float = 0.0,
        *,
        activation: str = "tanh",
        ortho_init: bool = True,
    ) -> None:
        super().__init__()
        self.discrete = isinstance(action_space, gym.spaces.Discrete)
        found = layout(observation_space)
        #: The observation's encoder, shared by actor and critic (SB3's shared features
        #: extractor): a Nature CNN for images, the identity for vectors.
        self.features = found.encoder(orthogonal=ortho_init)
        self.encoded = found.has_images
        n_in = self.features.out_dim
        if isinstance(action_space, gym.spaces.Discrete):
            n_out = int(action_space.n)
            self.action_shape: tuple[int, ...] = ()
        elif isinstance(action_space, gym.spaces.Box):
            n_out = int(np.prod(action_space.shape))
            self.action_shape = tuple(action_space.shape)
            self.log_std = nn.Parameter(torch.full((n_out,), float(log_std_init)))
            self.register_buffer("low", torch.as_tensor(action_space.low, dtype=torch.float32))
            self.register_buffer("high", torch.as_tensor(action_space.high, dtype=torch.float32))
        else:
            raise ValueError(f"action space {action_space} is not supported (Discrete or Box)")
        act = torch.relu if activation == "relu" else torch.tanh
        self.actor = mlp(n_in, net_arch, n_out, activation=act,
                         out_gain=0.01 if ortho_init else None)  # fmt: skip
        self.critic = mlp(n_in, net_arch, 1, activation=act, out_gain=1.0 if ortho_init else None)

    def encode(self, obs: torch.Tensor) -> torch.Tensor:
        """The features actor and critic read (the observation itself for vectors)."""
        return self.features(obs) if self.encoded else obs

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        """V(obs), shape ``(batch,)``."""
        value: torch.Tensor = self.critic(self.encode(obs))
        return value.squeeze(-1)

    def act(
        self, obs: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sample actions; return ``(action, log_prob, value)``."""
        x = self.encode(obs)
        return self._sample(self.actor(x), self.critic(x).squeeze(-1), generator)

    def rollout_act(self) -> Callable[[torch.Tensor, torch.Generator], tuple[torch.Tensor, ...]]:
        """:meth:`act` for a rollout, with actor and critic fused into one network.

        The two MLPs read the same input, so they run as one of twice the width:
        the first layers concatenated, the later ones block-diagonal. Half the
        kernel launches per environment step; the result is the same up to float
        rounding. The weights are a snapshot: take a new one after each update.
        """
        weights = []
        with torch.no_grad():
            for i, (a, c) in enumerate(zip(self.actor.linears, self.critic.linears, strict=True)):
                if i == 0:
                    w = torch.cat([a.weight, c.weight])
                else:
                    w = torch.block_diag(a.weight, c.weight)  # type: ignore[no-untyped-call]
                weights.append((w, torch.cat([a.bias, c.bias])))
        *hidden, (w_out, b_out) = weights
        n_actor = self.actor.linears[-1].out_features
        linear, sample, encode = nn.functional.linear, self._sample, self.encode
        activation = self.actor.activation

        def act(obs: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
            x = encode(obs)
            for w, b in hidden:
                x = activation(linear(x, w, b))
            out = linear(x, w_out, b_out)
            return sample(out[:, :n_actor], out[:, n_actor], generator)

        return act

    def _sample(
        self, out: torch.Tensor, value: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.discrete:
            log_probs = torch.log_softmax(out, dim=-1)
            # Gumbel-max sampling: one draw and an argmax, cheaper than torch.multinomial
            uniform = torch.rand(out.shape, generator=generator, device=out.device)
            action = (log_probs - torch.log(-torch.log(uniform))).argmax(-1, keepdim=True)
            return action.squeeze(-1), log_probs.gather(-1, action).squeeze(-1), value
        noise = torch.randn(out.shape, generator=generator, device=out.device)
        action = out + noise * self.log_std.exp()
        log_prob = (-0.5 * noise.square() - self.log_std - _LOG_SQRT_2PI).sum(-1)
        return action.reshape(-1, *self.action_shape), log_prob, value

    def evaluate_actions(
        self, obs: torch.Tensor, actions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(log_prob, entropy, value)`` of ``actions`` under the current policy."""
        x = self.encode(obs)
        out = self.actor(x)
        value = self.critic(x).squeeze(-1)
        if self.discrete:
            log_probs = torch.log_softmax(out, dim=-1)
            log_prob = log_probs.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)
            entropy = -(log_probs.exp() * log_probs).sum(-1)
            return log_prob, entropy, value
        actions = actions.reshape(out.shape)
        log_std = self.log_std
        z = (actions - out) * torch.exp(-log_std)
        log_prob = (-0.5 * z.square() - log_std - _LOG_SQRT_2PI).sum(-1)
        entropy = (0.5 + _LOG_SQRT_2PI + log_std).sum().expand(out.shape[0])
        return log_prob, entropy, value

    def deterministic_action(self, obs: torch.Tensor) -> torch.Tensor:
        """The mode of the policy: argmax for Discrete, the mean for Box."""
        out: torch.Tensor = self.actor(self.encode(obs))
        if self.discrete:
            return out.argmax(-1)
        return out.reshape(-1, *self.action_shape)

    def to_env(self, action: torch.Tensor) -> np.ndarray:
        """Actions as the environment takes them (Box actions clipped to its bounds)."""
        if not self.discrete:
            action = torch.clamp(action, self.low, self.high)
        return action.cpu().numpy()
