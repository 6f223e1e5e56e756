"""Training on several processes started by ``torchrun``: which process this is,
joining and leaving the process group, and the few collectives a run needs.

``torchrun`` (PyTorch's launcher, single node or many) starts one process per rank
and sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``; :func:`launch_world` reads
them (no torch import). :func:`process_group` joins the group (gloo on the CPU,
NCCL on CUDA with one device per local rank) and leaves it at the end.

What crosses processes, and when:

- once at the start: rank 0's run directory (or its error) and its initial weights;
- every optimiser step: one all-reduce of the flat gradient, which also carries
  each rank's stop request in one extra element, so every rank agrees to stop at
  the same whole-state point without a collective of its own
  (:meth:`Replicas.average_gradient_`, :meth:`Replicas.stop_agreed`);
- every logged row: one all-gather of the row's values and the episodes each rank
  finished since the last row (:meth:`Replicas.gather_row`);
- once at the end: a comparison of the weights (:meth:`Replicas.weight_difference`).

Nothing is exchanged per environment step, and :class:`CompositeLogger` does no
collective: a rank that skips a ``log_metrics`` call cannot block the others.
"""

from __future__ import annotations

import contextlib
import os
import sys
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from rl_training.errors import ConfigError
from rl_training.runtime.signals import requested_stop

if TYPE_CHECKING:
    import torch

TIMEOUT_ENV = "RL_TRAINING_DIST_TIMEOUT"
"""Seconds a collective may wait for the other ranks (default :data:`DEFAULT_TIMEOUT_S`)."""

DEFAULT_TIMEOUT_S = 300.0
"""A rank that stops answering (hangs, not crashes) ends every rank after this long.
A rank that crashes ends the others at once: its connections close, and torchrun
stops the rest."""


@dataclass(frozen=True)
class World:
    """This process's place among the processes of one run."""

    rank: int = 0
    """0 .. size - 1; rank 0 writes the run."""
    size: int = 1
    """Processes in the run (torchrun's ``WORLD_SIZE``)."""
    local_rank: int = 0
    """Rank on this node: the CUDA device a process uses."""

    @property
    def distributed(self) -> bool:
        """Whether more than one process trains this run."""
        return self.size > 1

    @property
    def is_writer(self) -> bool:
        """Whether this process writes the run (rank 0)."""
        return self.rank == 0


def launch_world(environ: Mapping[str, str] | None = None) -> World:
    """This process's :class:`World` from torchrun's variables (one process without them).

    Raises:
        ValueError: ``WORLD_SIZE``, ``RANK`` or ``LOCAL_RANK`` is set but not a valid
            number (the message names it).
    """
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" not in env:
        return World()
    values = {}
    for name, default in (("WORLD_SIZE", None), ("RANK", None), ("LOCAL_RANK", "0")):
        text = env.get(name, default)
        try:
            values[name] = int(text) if text is not None else -1
        except ValueError:
            values[name] = -1
        if values[name] < 0:
            raise ConfigError(
                f"{name}: {text!r} is not a valid torchrun setting (a non-negative integer); "
                "launch with torchrun, or unset WORLD_SIZE to train in one process"
            )
    size, rank = values["WORLD_SIZE"], values["RANK"]
    if size < 1 or rank >= size:
        raise ConfigError(
            f"RANK: {rank} is not below WORLD_SIZE {size}; launch with torchrun, or unset "
            "WORLD_SIZE to train in one process"
        )
    return World(rank=rank, size=size, local_rank=values["LOCAL_RANK"])


def check_supported(algo: str, supported: bool, world: World) -> None:
    """Refuse an algorithm that cannot train on several processes yet.

    Raises:
        ValueError: ``world`` is distributed and ``supported`` is false.
    """
    if world.distributed and not supported:
        from rl_training.registry import ALGORITHMS

        able = [name for name, spec in ALGORITHMS.items() if spec.distributed]
        raise ConfigError(
            f"algo: {algo!r} does not train on several processes yet (WORLD_SIZE={world.size}); "
            f"run it in one process, or use {' or '.join(able)} under torchrun"
        )


def _timeout() -> timedelta:
    text = os.environ.get(TIMEOUT_ENV)
    try:
        seconds = float(text) if text else DEFAULT_TIMEOUT_S
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise ConfigError(f"{TIMEOUT_ENV}: {text!r} is not a positive number of seconds")
    return timedelta(seconds=seconds)


@contextlib.contextmanager
def process_group(world: World, device: torch.device) -> Iterator[None]:
    """Join the run's process group for the block, and leave it at the end.

    Nothing happens in one process, or if the caller already joined a group (it
    is the caller's to leave). gloo on the CPU; NCCL on CUDA, after making
    ``device`` (``cuda:LOCAL_RANK``) this process's current device.
    """
    if not world.distributed:
        yield
        return
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        if dist.get_world_size() != world.size:
            raise ConfigError(
                f"the process group has {dist.get_world_size()} processes but WORLD_SIZE "
                f"is {world.size}"
            )
        yield
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    # torch._dynamo, imported lazily by the first optimizer, keeps references to a
    # process group that exists when it is imported; then destroy_process_group()
    # cannot free the group, its gloo threads outlive the interpreter, and about
    # one launch in twenty aborted at exit ("terminate called without an active
    # exception"). Imported before joining, it holds none.
    import torch._dynamo  # noqa: F401

    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, timeout=_timeout())
    try:
        yield
        dist.barrier()  # leave together: nobody closes connections another still uses
    finally:
        dist.destroy_process_group()


def current_world(what: str) -> World:
    """The world of the joined process group (torchrun's, or one the caller made),
    else one process.

    Raises:
        ValueError: torchrun started this process but nobody joined the group
            (``what`` names the call that needs it).
    """
    world = launch_world()
    dist = sys.modules.get("torch.distributed")  # never imports torch for one process
    if dist is not None and dist.is_available() and dist.is_initialized():
        return World(rank=dist.get_rank(), size=dist.get_world_size(), local_rank=world.local_rank)
    if world.distributed:
        raise ConfigError(
            f"{what} runs under torchrun (rank {world.rank} of {world.size}): call "
            "torch.distributed.init_process_group() first"
        )
    return world


def _share_outcome(world: World, outcome: BaseException | None, value: Any = None) -> Any:
    """Every rank learns whether rank 0 succeeded, and rank 0's ``value``.

    Rank 0 passes its result (``value``, picklable) or the exception it got
    (``outcome``); the other ranks get ``value``, or raise :class:`OtherRankFailed`
    (:class:`OtherRankConfigError` for bad input) naming rank 0's error. Rank 0
    re-raises its own exception itself.
    """
    import torch.distributed as dist

    payload: list[Any] = [(_failure(outcome), value) if world.is_writer else None]
    dist.broadcast_object_list(payload, src=0)
    failure, shared = payload[0]
    if world.is_writer:
        return value
    _raise_failure(0, failure)
    return shared


def _agree(world: World, error: BaseException | None) -> None:
    """Every rank learns whether every rank succeeded; raise if any failed.

    A rank that failed re-raises its own error; the others raise
    :class:`OtherRankFailed` (a ``ValueError`` when the first failure was bad
    input), naming the first failing rank.
    """
    import torch.distributed as dist

    failures: list[Any] = [None] * world.size
    dist.all_gather_object(failures, _failure(error))
    if error is not None:
        raise error
    for rank, failure in enumerate(failures):
        _raise_failure(rank, failure)


T = TypeVar("T")
R = TypeVar("R")


def checked_on_every_rank(world: World, check: Callable[[], T]) -> T:
    """``check()`` on every rank; if it raises on any, it raises on every rank (the
    failing rank its own error, the others :class:`OtherRankFailed` naming it)."""
    try:
        result = check()
    except Exception as error:
        if not world.distributed:
            raise
        _agree(world, error)
    if world.distributed:
        _agree(world, None)
    return result


def opened_by_rank_zero(
    world: World,
    open_run: Callable[[], R],
    share: Callable[[R], Any],
    follow: Callable[[Any], R],
) -> R:
    """Rank 0 opens (``open_run()``) and hands ``share(run)`` to the other ranks, which
    make their own from it (``follow(shared)``); rank 0's error fails every rank."""
    if not world.distributed:
        return open_run()
    if not world.is_writer:
        return follow(_share_outcome(world, None))
    try:
        run = open_run()
    except BaseException as error:
        _share_outcome(world, error)
        raise
    _share_outcome(world, None, share(run))
    return run


def _failure(error: BaseException | None) -> tuple[bool, str] | None:
    """What crosses to the other ranks of an error: (bad input?, its description)."""
    if error is None:
        return None
    return isinstance(error, ValueError), f"{type(error).__name__}: {error}"


def _raise_failure(rank: int, failure: tuple[bool, str] | None) -> None:
    """Raise, on this rank, the failure ``rank`` reported (nothing if it had none)."""
    if failure is not None:
        bad_input, message = failure
        raise (OtherRankConfigError if bad_input else OtherRankFailed)(f"rank {rank}: {message}")


class OtherRankFailed(RuntimeError):
    """Another rank of the run failed; it reports its own error."""


class OtherRankConfigError(ConfigError):
    """Another rank of the run refused its input; rank 0 reports it."""


class Replicas:
    """The collectives of a data-parallel trainer: all of them go through here.

    Args:
        world: This process's place.
        device: Where the trainer's tensors live (NCCL exchanges device tensors,
            gloo host tensors).
    """

    def __init__(self, world: World, device: torch.device) -> None:
        import torch
        import torch.distributed as dist

        self.world = world
        self._dist = dist
        self._comm_device = device if dist.get_backend() == "nccl" else torch.device("cpu")
        self._stop = torch.zeros(1, device=device)
        self._stop_fresh = False

    # -- start ---------------------------------------------------------------------------

    def broadcast_(self, tensors: Sequence[torch.Tensor]) -> None:
        """Overwrite ``tensors`` (floating point) in place with rank 0's, in one broadcast."""
        import torch

        with torch.no_grad():
            flat = torch.cat([t.detach().reshape(-1).to(torch.float64) for t in tensors])
            self._dist.broadcast(flat, src=0)
            offset = 0
            for tensor in tensors:
                n = tensor.numel()
                tensor.copy_(flat[offset : offset + n].view_as(tensor))
                offset += n

    def sum_(self, tensor: torch.Tensor) -> None:
        """Sum ``tensor`` over the ranks, in place (``normalize_obs`` statistics)."""
        if self._comm_device == tensor.device:
            self._dist.all_reduce(tensor)
            return
        host = tensor.to(self._comm_device)
        self._dist.all_reduce(host)
        tensor.copy_(host)

    # -- every optimiser step --------------------------------------------------------------

    def average_gradient_(self, buffer: torch.Tensor) -> None:
        """Average ``buffer[:-1]`` (a flat gradient) over the ranks, in place, in one
        all-reduce whose last element counts the ranks asking to stop (SIGINT/SIGTERM)."""
        buffer[-1] = 0.0 if requested_stop() is None else 1.0  # a device fill: no host sync
        self._dist.all_reduce(buffer)
        buffer[:-1].div_(self.world.size)
        self._stop.copy_(buffer[-1:])
        self._stop_fresh = True

    def stop_agreed(self) -> bool:
        """Whether any rank asked to stop, as of the last gradient all-reduce.

        Every rank gets the same answer at the same point, so they stop together.
        Without an all-reduce since the last call, one small all-reduce decides.
        """
        if not self._stop_fresh:
            self._stop.fill_(0.0 if requested_stop() is None else 1.0)
            self._dist.all_reduce(self._stop)
        self._stop_fresh = False
        return bool(self._stop.item() > 0)

    # -- every logged row --------------------------------------------------------------------

    def gather_row(
        self, values: Mapping[str, Any] | None, episodes: np.ndarray, capacity: int
    ) -> tuple[dict[str, Any] | None, np.ndarray]:
        """One all-gather of a training row and each rank's finished episodes.

        Args:
            values: The row of this rank (the same keys on every rank), or ``None``
                when only episodes are exchanged.
            episodes: ``(n, w)`` rows of ``(step, return, length, extras...)``,
                ``n <= capacity``; ``w`` (3 and the extras) is the same on every rank.
            capacity: The most episodes any rank can have (the same on every rank).

        Returns:
            The row with tensor values averaged over the ranks (plain numbers are
            counters and schedules, the same everywhere: rank 0's are kept), and
            every rank's episodes sorted by step (ties: rank order).
        """
        import torch

        keys = sorted(values) if values is not None else []
        tensor_keys = [k for k in keys if isinstance(values[k], torch.Tensor)]  # type: ignore[index]
        head = len(tensor_keys) + 1
        width = episodes.shape[1] if episodes.ndim == 2 else 3
        packed = torch.zeros(head + width * capacity, dtype=torch.float64)
        if tensor_keys:
            assert values is not None
            stacked = torch.stack([values[k].detach().reshape(()).double() for k in tensor_keys])
            packed[: len(tensor_keys)] = stacked.cpu()  # one copy to the host per row
        packed[head - 1] = len(episodes)
        if len(episodes):
            packed[head : head + width * len(episodes)] = torch.from_numpy(
                np.ascontiguousarray(episodes, dtype=np.float64).reshape(-1)
            )
        send = packed.to(self._comm_device)
        parts = [torch.empty_like(send) for _ in range(self.world.size)]
        self._dist.all_gather(parts, send)
        gathered = torch.stack(parts).cpu().numpy()  # (size, head + width * capacity)
        counts = gathered[:, head - 1].astype(np.int64)
        all_episodes = np.concatenate(
            [
                gathered[r, head : head + width * counts[r]].reshape(-1, width)
                for r in range(self.world.size)
            ]
        )
        order = np.argsort(all_episodes[:, 0], kind="stable")
        row: dict[str, Any] | None = None
        if values is not None:
            means = gathered[:, : len(tensor_keys)].mean(axis=0)
            row = dict(values)
            row.update({k: float(m) for k, m in zip(tensor_keys, means, strict=True)})
        return row, all_episodes[order]

    # -- the end -------------------------------------------------------------------------------

    def weight_difference(self, tensors: Sequence[torch.Tensor]) -> float:
        """The largest difference between two ranks' copies of ``tensors`` (0.0: in sync)."""
        import torch

        flat = torch.cat([t.detach().reshape(-1).double() for t in tensors]).to(self._comm_device)
        high, low = flat.clone(), flat.clone()
        self._dist.all_reduce(high, op=self._dist.ReduceOp.MAX)
        self._dist.all_reduce(low, op=self._dist.ReduceOp.MIN)
        return float((high - low).max().item()) if flat.numel() else 0.0


REDUCE_OPS = ("mean", "sum", "max", "min")
"""What :func:`reduce_metrics` can do across ranks."""


def reduce_metrics(metrics: Mapping[str, Any], op: str = "mean") -> dict[str, float]:
    """Reduce a metrics dict across the ranks of a torchrun run, in one collective.

    For training loops of your own (see :func:`rl_training.create_run`): every rank
    calls it with the same keys; every rank gets the reduced values, and rank 0
    logs them. In one process (or without a process group) the values come back
    as floats.

    Args:
        metrics: Name -> number or one-element tensor.
        op: ``"mean"``, ``"sum"``, ``"max"`` or ``"min"``.

    Raises:
        ValueError: an unknown ``op``, a value that is not one number, or ranks that
            passed different keys.
    """
    import torch

    if op not in REDUCE_OPS:
        raise ConfigError(f"op: {op!r} is not one of {', '.join(map(repr, REDUCE_OPS))}")
    keys = sorted(metrics)
    values = []
    for key in keys:
        value = metrics[key]
        if isinstance(value, torch.Tensor):
            if value.numel() != 1:
                raise ConfigError(f"{key}: a tensor of {value.numel()} elements is not one number")
            value = value.detach().reshape(()).double().cpu()
        elif isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
            raise ConfigError(f"{key}: a {type(value).__name__} is not a number")
        values.append(float(value))
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return dict(zip(keys, values, strict=True))
    device = torch.device("cuda", torch.cuda.current_device()) if (
        dist.get_backend() == "nccl") else torch.device("cpu")  # fmt: skip
    # The key names' checksum travels with the values: different keys on two ranks
    # give a sum that is not size x this rank's checksum.
    checksum = float(zlib.crc32("\0".join(keys).encode("utf-8", "surrogatepass")))
    size = dist.get_world_size()
    dist_op = {"mean": dist.ReduceOp.SUM, "sum": dist.ReduceOp.SUM,
               "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}[op]  # fmt: skip
    tensor = torch.tensor([*values, checksum], dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist_op)
    reduced = tensor.cpu().tolist()
    expected = checksum * size if dist_op == dist.ReduceOp.SUM else checksum
    if reduced[-1] != expected:
        raise ConfigError(
            f"reduce_metrics: the ranks passed different keys (this rank: {', '.join(keys)})"
        )
    if op == "mean":
        reduced = [v / size for v in reduced]
    return dict(zip(keys, reduced[:-1], strict=True))


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank ``rank``'s environments and generator: ``seed`` itself on rank 0
    (a one-process run and rank 0 start alike), far from it on the others."""
    if rank == 0:
        return seed
    state = np.random.SeedSequence([seed, rank, 0x72616E6B]).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 32 | int(state[1])


__all__ = [
    "DEFAULT_TIMEOUT_S",
    "OtherRankConfigError",
    "OtherRankFailed",
    "REDUCE_OPS",
    "Replicas",
    "TIMEOUT_ENV",
    "World",
    "check_supported",
    "checked_on_every_rank",
    "current_world",
    "launch_world",
    "opened_by_rank_zero",
    "process_group",
    "rank_seed",
    "reduce_metrics",
]
