"""``rl-train``: parse options, build the config, train or resume, print one summary line.

Bad input exits 2 and an OS error (a full disk, a directory that cannot be made)
exits 1, each with one line on stderr and no traceback; bad input leaves no run
directory. Ctrl-C (SIGINT) or SIGTERM stops at the next whole-state point: a
checkpoint, every sink closed, the run marked ``"interrupted"``, the run directory
printed, exit 130 or 143. A second Ctrl-C stops at once (no checkpoint), still
closing every sink.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import signal
import sys
import time
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NoReturn, TextIO

from rl_training import hyperparams as hp_module
from rl_training.config import TrainConfig
from rl_training.errors import ConfigError, EnvError, NonFiniteError
from rl_training.experiment.run import SinkCreationError
from rl_training.presets import preset_hyperparams
from rl_training.registry import ALGOS, get_spec
from rl_training.runtime.distributed import OtherRankFailed, World, check_supported, launch_world
from rl_training.runtime.signals import Terminated, graceful_stop, ignore_stop_signals

if TYPE_CHECKING:
    from rl_training.experiment.run import TrainingRun
    from rl_training.trainers import TrainResult  # imports torch: only where training

EXIT_OS_ERROR = 1
EXIT_BAD_INPUT = 2
EXIT_SIGINT = 128 + signal.SIGINT
EXIT_SIGTERM = 128 + signal.SIGTERM


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (argparse prints the usage first)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``rl-train`` argument parser."""
    parser = _Parser(
        prog="rl-train",
        description="Train a PyTorch RL agent on a gymnasium env, logging to pluggable sinks.",
        epilog="Hyperparameters per algorithm: rl-train --algo ALGO --list-hyperparams. "
        "Results over seeds: rl-train report RUN_DIR... (see rl-train report --help).",
    )
    for option in config_options():
        parser.add_argument(option.flag, **option.kwargs)
    parser.add_argument(
        "--hp",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="hyperparameter override, typed by its default (repeatable)",
    )
    parser.add_argument(
        "--preset",
        metavar="NAME",
        help="rl-zoo's hyperparameters for a family of envs, under --hp: "
        "atari (ppo, a2c, dqn) or mujoco (ppo, sac, td3)",
    )
    parser.add_argument(
        "--precision",
        choices=hp_module.PRECISIONS,
        help="matmul precision in training (--hp precision=...): dqn, sac and td3's "
        "hidden layers and every algorithm's Nature CNN; bf16 is 1.5-2x the throughput "
        "on CPUs with AVX512-BF16 or AMX, on fp32 master weights (default: fp32)",
    )
    parser.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue RUN_DIR from its checkpoint, in place (--total-timesteps may raise "
        "its budget)",
    )
    parser.add_argument(
        "--evaluate",
        metavar="RUN_DIR",
        help="play --episodes deterministic episodes with RUN_DIR's model; print mean +- std",
    )
    parser.add_argument(
        "--episodes", type=int, default=20, metavar="N", help="with --evaluate (default: 20)"
    )
    parser.add_argument(
        "--which",
        choices=("final", "best", "checkpoint"),
        default="final",
        help="with --evaluate: model.pt, best_model.pt or checkpoint.pt (default: final)",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.add_argument("--run-suffix", help="appended to the run directory's name")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    parser.add_argument(
        "--nproc-per-node",
        type=int,
        metavar="N",
        help="train (or resume) as N processes on this machine, as torchrun --standalone "
        "would; Ctrl-C and SIGTERM end every rank cleanly (exit 130 / 143)",
    )
    parser.add_argument("--list-sinks", action="store_true", help="list installed sinks and exit")
    parser.add_argument(
        "--list-hyperparams", action="store_true", help="list --algo's hyperparameters and exit"
    )
    parser.add_argument("--json", action="store_true", help="with --list-sinks: JSON output")
    return parser


def _version() -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version("rl-training")
    except importlib.metadata.PackageNotFoundError:
        return "(not installed)"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``rl-train`` and ``python -m rl_training``; returns the exit status."""
    for stream in (sys.stdout, sys.stderr):
        # Paths that are not UTF-8 (decoded with surrogates) print as their own bytes.
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="surrogateescape")
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["report"]:
        return report_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.nproc_per_node is not None and "WORLD_SIZE" not in os.environ:
        return _launch(args, argv)
    try:
        # Under torchrun every rank runs this; rank 0 speaks for the run.
        _Say.quiet = launch_world().rank != 0
        if args.json and not args.list_sinks:
            raise ConfigError("--json goes with --list-sinks (the listing it formats)")
        if args.list_sinks:
            return list_sinks(as_json=args.json)
        if args.list_hyperparams:
            return list_hyperparams(args.algo)
        if args.evaluate is not None:
            return _evaluate(args)
        if args.resume is not None:
            return _resume(args)
        return _train(args)
    except ConfigError as error:
        return _fail(EXIT_BAD_INPUT, str(error))
    except FileNotFoundError as error:  # --resume of a directory without a checkpoint
        return _fail(EXIT_BAD_INPUT, describe_os_error(error))
    except OSError as error:
        return _fail(EXIT_OS_ERROR, describe_os_error(error))
    except SinkCreationError as error:
        return _fail(EXIT_OS_ERROR, str(error))
    except OtherRankFailed:  # rank 0 reports it
        return EXIT_OS_ERROR
    except (NonFiniteError, EnvError) as error:  # the run is "failed"; one line says why
        rank = launch_world().rank  # this rank's env or numbers: it speaks, whichever it is
        where = f" (rank {rank})" if rank else ""
        print(f"rl-train: error{where}: {error}", file=sys.stderr)
        return EXIT_OS_ERROR


class _Say:
    quiet = False
    """Whether this process is a torchrun rank other than 0 (it prints nothing)."""


def build_report_parser() -> argparse.ArgumentParser:
    """The ``rl-train report`` argument parser."""
    parser = _Parser(
        prog="rl-train report",
        description="Per-seed final and best returns, the IQM with a 95%% bootstrap CI, and "
        "a PNG of the learning curves, for runs grouped by algorithm and env id (read from "
        "metrics.jsonl; needs the report extra: pip install 'rl-training[report]').",
    )
    parser.add_argument("runs", nargs="*", metavar="RUN_DIR",
                        help="run directories, or directories of runs (e.g. runs)")  # fmt: skip
    parser.add_argument("--out", default="report",
                        help="where learning_curves.png and report.json go")  # fmt: skip
    parser.add_argument("--window", type=int, default=100,
                        help="episodes a return is averaged over (default: 100)")  # fmt: skip
    parser.add_argument("--include-unfinished", action="store_true",
                        help="count interrupted, failed and killed runs in the IQM too "
                        "(by default it is over finished runs; every run is listed)")  # fmt: skip
    return parser


def report_main(argv: Sequence[str]) -> int:
    """``rl-train report RUN_DIR... [--out DIR] [--window N] [--include-unfinished]``;
    returns the exit status."""
    from rl_training.report import MissingExtraError, report

    args = build_report_parser().parse_args(argv)
    try:
        report(
            args.runs,
            args.out,
            window=args.window,
            include_unfinished=args.include_unfinished,
            stream=sys.stdout,
            warn=sys.stderr,
        )
    except ConfigError as error:
        return _fail(EXIT_BAD_INPUT, str(error))
    except MissingExtraError as error:
        return _fail(EXIT_OS_ERROR, str(error))
    except OSError as error:
        return _fail(EXIT_OS_ERROR, describe_os_error(error))
    return 0


def _launch(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """``--nproc-per-node N``: the same command as N ranks (without the option), once
    what the command line alone can tell is checked here, before any rank starts."""
    from rl_training.runtime.launcher import launch_ranks

    nproc = args.nproc_per_node
    try:
        if args.resume is None and args.evaluate is None and not args.list_sinks:
            config = config_from_args(args)
            check_supported(config.algo, get_spec(config.algo).distributed,
                            World(rank=0, size=max(nproc, 1)))  # fmt: skip
    except ConfigError as error:
        return _fail(EXIT_BAD_INPUT, str(error))

    rest, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc-per-node":
            skip = True
        elif not arg.startswith("--nproc-per-node="):
            rest.append(arg)
    try:
        return launch_ranks(nproc, rest)
    except ConfigError as error:
        return _fail(EXIT_BAD_INPUT, str(error))


def _fail(code: int, message: str) -> int:
    if not _Say.quiet:
        print(f"rl-train: error: {message}", file=sys.stderr)
    return code


def describe_os_error(error: OSError) -> str:
    """One line naming the path and the OS error, e.g. ``runs/x: No space left on device``."""
    paths = [p for p in (error.filename, error.filename2) if p is not None]
    reason = error.strerror or str(error)
    where = " -> ".join(map(str, paths))
    return f"{where}: {reason}" if where else reason


@dataclasses.dataclass(frozen=True)
class ConfigOption:
    """A command-line option for one :class:`TrainConfig` field."""

    field: str
    """The field's name."""
    flag: str
    """``--field-name``."""
    kwargs: dict[str, Any]
    """``argparse`` ``add_argument`` keywords."""


def config_options() -> list[ConfigOption]:
    """One option per :class:`TrainConfig` field, from the dataclass itself: its name,
    its type and the help in its metadata (``hyperparams`` is ``--hp``, below)."""
    types = typing.get_type_hints(TrainConfig)
    options = []
    for f in dataclasses.fields(TrainConfig):
        if "cli" in f.metadata:
            continue
        kwargs: dict[str, Any] = {"help": f.metadata["help"], "metavar": f.metadata.get("metavar")}
        if f.name == "algo":
            kwargs["choices"], kwargs["metavar"] = ALGOS, None
        elif types[f.name] in (int, int | None):
            kwargs["type"] = int
        options.append(ConfigOption(f.name, "--" + f.name.replace("_", "-"), kwargs))
    return options


def given_config_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The :class:`TrainConfig` fields given on the command line."""
    return {o.field: getattr(args, o.field) for o in config_options()
            if getattr(args, o.field) is not None}  # fmt: skip


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The :class:`TrainConfig` the options describe (the dataclass checks the values).

    Raises:
        ConfigError: a required option is missing, or a value is bad.
    """
    fields = dataclasses.fields(TrainConfig)
    values = {f.name: f.metadata["cli_default"] for f in fields if "cli_default" in f.metadata}
    values.update(given_config_fields(args))
    required = [f.name for f in fields if f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING]  # fmt: skip
    missing = ["--" + name.replace("_", "-") for name in required if name not in values]
    if missing:
        raise ConfigError(f"missing {', '.join(missing)} (see rl-train --help)")
    hyperparams = preset_hyperparams(args.preset, args.algo) if args.preset else {}
    hyperparams.update(parse_hyperparams(args.algo, args.hp))
    if args.precision:
        if hyperparams.setdefault("precision", args.precision) != args.precision:
            raise ConfigError(
                f"--precision {args.precision} and --hp precision={hyperparams['precision']} "
                "disagree: give one"
            )
    return TrainConfig(**values, hyperparams=hyperparams)


def parse_hyperparams(algo: str, pairs: Sequence[str]) -> dict[str, Any]:
    """``["KEY=VALUE", ...]`` -> overrides, each VALUE read as its hyperparameter's type.

    Raises:
        ConfigError: not ``KEY=VALUE``, an unknown key (the valid ones are listed), or a
            value that does not read as the key's type.
    """
    spec = get_spec(algo)
    types = hp_module.field_types(spec.hyperparams)
    overrides: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--hp {pair!r} is not KEY=VALUE, e.g. --hp learning_rate=3e-4")
        if key not in types:
            raise ConfigError(
                f"--hp: unknown hyperparameter {key!r} for {algo!r}; valid: "
                f"{', '.join(spec.hyperparam_names)}"
            )
        overrides[key] = _parse_value(key, text.strip(), types[key])
    return overrides


def _parse_value(key: str, text: str, annotation: Any) -> Any:
    """Read ``text`` as a value for ``annotation``; the dataclass then checks its range."""
    candidates: list[Any] = []
    if text.lower() in ("true", "false", "yes", "no", "on", "off"):
        candidates.append(text.lower() in ("true", "yes", "on"))
    try:
        candidates.append(int(text))
    except ValueError:
        pass
    try:
        candidates.append(float(text))
    except ValueError:
        pass
    if text.startswith("[") or "," in text:
        items = text.strip("[]()").split(",")
        try:
            candidates.append([int(item) for item in items if item.strip()])
        except ValueError:
            pass
    candidates.append(text)
    for candidate in candidates:
        try:
            return hp_module.coerce(key, candidate, annotation)
        except ValueError:
            continue
    raise ConfigError(
        f"--hp {key}={text!r}: expected {hp_module.describe(annotation)} "
        f"(e.g. {_example(annotation)})"
    )


def _example(annotation: Any) -> str:
    return {bool: "true", int: "128", float: "3e-4", str: "auto"}.get(annotation, "64,64")


def list_sinks(*, as_json: bool, out: TextIO = sys.stdout) -> int:
    """Print every installed sink with its provider, and plugins that failed to load."""
    import warnings

    from rl_training.plugins import discover_sinks

    with warnings.catch_warnings(record=True):  # shown below, in the listing itself
        warnings.simplefilter("always")
        catalog = discover_sinks()
    if as_json:
        data = {
            "sinks": [
                {
                    "name": i.name,
                    "distribution": i.distribution,
                    "version": i.version,
                    "plugin": i.plugin,
                }
                for i in catalog.sinks.values()
            ],
            "conflicts": {
                name: [f"{p.distribution} {p.version}" for p in providers]
                for name, providers in catalog.conflicts.items()
            },
            "failed_plugins": [dataclasses.asdict(f) for f in catalog.failures],
        }
        print(json.dumps(data, indent=2), file=out)
        return 0
    width = max([len(name) for name in catalog.sinks] + [4])
    print(f"{'SINK':<{width}}  PROVIDED BY", file=out)
    for info in catalog.sinks.values():
        print(f"{info.name:<{width}}  {info.provider}", file=out)
    for name, providers in catalog.conflicts.items():
        names = " and ".join(p.provider for p in providers)
        print(f"{name:<{width}}  UNUSABLE: offered by {names}", file=out)
    if catalog.failures:
        print("\nplugins that failed to load:", file=out)
        for failure in catalog.failures:
            print(f"  {failure.entry_point} ({failure.distribution}): {failure.error}", file=out)
    return 0


def list_hyperparams(algo: str | None, out: TextIO = sys.stdout) -> int:
    """Print ``algo``'s hyperparameters: ``name=default`` and what each one means."""
    if algo is None:
        raise ConfigError(f"--list-hyperparams needs --algo (one of {', '.join(ALGOS)})")
    spec = get_spec(algo)
    docs = hp_module.field_docs(spec.hyperparams)
    rows = []
    for f in spec.hyperparam_fields():
        default = f.default
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        rows.append((f"{f.name}={shown}", docs.get(f.name, "").replace("``", "")))
    print(f"{spec.title}", file=out)
    width = max(len(left) for left, _ in rows)
    for left, doc in rows:
        print(f"  {left:<{width}}  {doc}", file=out)
    return 0


def _train(args: argparse.Namespace) -> int:
    config = config_from_args(args)

    def start(progress: Progress) -> TrainResult:
        # imported under _drive's handlers (a Ctrl-C inside torch's import can be lost);
        # here, not at the top: --help and bad input stay fast
        from rl_training.trainers import train

        return train(config, args.run_suffix, progress=progress)

    return _drive(args, start)


def _resume(args: argparse.Namespace) -> int:
    from rl_training.config import RESUMABLE_FIELDS

    fixed = [f"--{name.replace('_', '-')}" for name in given_config_fields(args)
             if name not in RESUMABLE_FIELDS]  # fmt: skip
    fixed += ["--run-suffix"] * bool(args.run_suffix) + ["--hp"] * bool(args.hp)
    fixed += ["--preset"] * bool(args.preset) + ["--precision"] * bool(args.precision)
    if fixed:
        raise ConfigError(
            f"--resume continues a run as it was configured; {', '.join(fixed)} "
            "cannot change (only --total-timesteps and --device can)"
        )
    device = args.device if "device" in given_config_fields(args) else None

    def start(progress: Progress) -> TrainResult:
        from rl_training.trainers import resume  # under _drive's handlers, as in _train

        return resume(args.resume, total_timesteps=args.total_timesteps, device=device,
                      progress=progress)  # fmt: skip

    return _drive(args, start)


def _evaluate(args: argparse.Namespace) -> int:
    from rl_training.trainers import evaluate

    if args.episodes < 1:
        raise ConfigError(f"--episodes: {args.episodes} is not a positive number of episodes")
    result = evaluate(args.evaluate, n_episodes=args.episodes, which=args.which)
    print(
        f"{args.evaluate}: mean return {result.mean_return:.2f} +- {result.std_return:.2f} "
        f"over {len(result.returns)} episodes (mean length "
        f"{sum(result.lengths) / len(result.lengths):.1f})",
        flush=True,
    )
    return 0


def _drive(args: argparse.Namespace, start: Callable[[Progress], TrainResult]) -> int:
    """Train (or resume) with the progress display; print the summary, or the run
    directory on a stop. SIGINT/SIGTERM handlers are ours from before the run
    directory exists to the end: a late Ctrl-C must not become a traceback."""
    progress = Progress(sys.stderr, quiet=args.quiet)
    with graceful_stop(restore=False):
        try:
            result = start(progress)
        except KeyboardInterrupt as interrupt:
            ignore_stop_signals()
            progress.close()
            if progress.run is not None and progress.run.writer:
                print(f"rl-train: interrupted; run directory: {progress.run.run_dir}",
                      file=sys.stderr)  # fmt: skip
                print(progress.run.run_dir, flush=True)
            return EXIT_SIGTERM if isinstance(interrupt, Terminated) else EXIT_SIGINT
        ignore_stop_signals()
    progress.close()
    run = progress.run
    if run is None or not run.writer:
        return 0
    mean = "n/a" if math.isnan(result.mean_return) else f"{result.mean_return:.2f}"
    print(
        f"run {result.run_dir}: {result.steps} steps in {result.wall_time_s:.1f}s, "
        f"mean return {mean} (last 20 episodes)",
        flush=True,
    )
    for name, stats in run.logger.delivery_stats().items():  # say it when a sink lost calls
        if stats["dropped"] or stats["undelivered"] or stats["error"]:
            error = f"; error: {stats['error']}" if stats["error"] else ""
            print(f"sink {name}: {stats['calls']} calls, {stats['dropped']} dropped (queue "
                  f"full), {stats['undelivered']} undelivered{error}", flush=True)  # fmt: skip
    if run.plan is not None and "tensorboard" in run.plan.config.log_sinks:
        print(f"view: tensorboard --logdir {run.run_dir.parent}", flush=True)
    return 0


class Progress:
    """Steps, steps/s, episodes, the mean return of the last 100 and time left, on stderr.

    A tqdm bar when stderr is a terminal; otherwise a plain line at most every
    ``interval`` seconds, which reads well in a log file.
    """

    def __init__(self, stream: TextIO, interval: float = 10.0, *, quiet: bool = False) -> None:
        self.run: TrainingRun | None = None
        """The run, once open (the command line prints its directory on a stop)."""
        self._stream = stream
        self._interval = interval
        self._quiet = quiet
        self._total = 0
        self._mean = math.nan
        self._episodes = 0
        self._sps = math.nan
        self._step = 0
        self._last_print = time.monotonic()
        self._bar: Any = None

    def run_opened(self, run: TrainingRun) -> None:
        """Start the display for ``run`` (nothing on a torchrun rank other than 0)."""
        self.run = run
        assert run.plan is not None  # a run of a built-in trainer
        self._total = run.plan.config.total_timesteps
        self._step = run.run_context.resume_step or 0
        self._quiet = self._quiet or not run.writer
        if not self._quiet and self._stream.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=self._total, initial=self._step, file=self._stream,
                             unit="step", dynamic_ncols=True)  # fmt: skip

    def __call__(self, metrics: Mapping[str, Any], step: int) -> None:
        """Take one logged row."""
        if "episode/return" in metrics:
            self._episodes += 1
            self._mean = float(metrics.get("episode/return_mean", metrics["episode/return"]))
        if "time/sps" in metrics:
            self._sps = float(metrics["time/sps"])
        advanced, self._step = step - self._step, max(step, self._step)
        if self._bar is not None:
            if advanced > 0:
                self._bar.update(advanced)
            self._bar.set_postfix(episodes=self._episodes, return_mean=f"{self._mean:.1f}",
                                  refresh=False)  # fmt: skip
        elif not self._quiet and time.monotonic() - self._last_print >= self._interval:
            self._last_print = time.monotonic()
            left = (self._total - self._step) / self._sps if self._sps > 0 else math.nan
            print(
                f"steps {self._step}/{self._total} ({100 * self._step / self._total:.0f}%) | "
                f"{self._sps:.0f} steps/s | {self._episodes} episodes, mean return "
                f"{self._mean:.2f} | time left {left:.0f}s",
                file=self._stream,
                flush=True,
            )

    def close(self) -> None:
        """Finish the bar."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
