"""Where an Atari iteration's time goes: each part of it timed alone, against whole iterations.

A PPO ``--preset atari`` iteration is 128 vector steps of 8 envs (a policy forward on
8 frame stacks and an env step each), then 4 epochs of 4 minibatches of 256 (the CNN's
forward and backward and an Adam step each). A DQN one (train_freq 4) is 4 steps of
one env (a Q forward on one stack and an env step each), then one minibatch of 32 (a
target forward, a forward and backward, an Adam step). This builds the real trainer
(``--preset atari`` hyperparameters, this machine's thread settings), times each part
alone in a loop (median of repeats), adds them up into the iteration's floor — what
it would take with no overhead between the parts — and times whole iterations beside
it. With ``--sb3 SPS`` (SB3's steps/s from ``bench_envs.py``, same case) it prints
the most this floor allows against SB3: a goal above that needs less work (or a
different machine), not less overhead. The matrix work is counted by
``torch.utils.flop_counter``.

    python benchmarks/bench_atari_floor.py ppo [dqn] [--precision bf16] [--sb3 258]
        [--env-id BreakoutNoFrameskip-v4]

Needs ``pip install 'rl-training[atari]'``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from rl_training import TrainConfig
from rl_training.experiment.logging import CompositeLogger
from rl_training.presets import preset_hyperparams
from rl_training.runtime.plan import resolve_plan
from rl_training.trainers.on_policy import collect_rollout
from rl_training.trainers.session import Session, trainer_class


def timed(part: Callable[[], Any], calls: int, repeats: int = 5) -> float:
    """Median seconds of one call of ``part`` (``calls`` calls per repeat, after one)."""
    part()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            part()
        times.append((time.perf_counter() - start) / calls)
    return statistics.median(times)


def flops(part: Callable[[], Any]) -> float:
    with FlopCounterMode(display=False) as counter:
        part()
    return float(counter.get_total_flops())


def open_trainer(algo: str, env_id: str, precision: str, root: Path) -> tuple[Session[Any], Any]:
    hp = {**preset_hyperparams("atari", algo), "precision": precision}
    if algo == "dqn":
        hp.update(learning_starts=0, buffer_size=10_000)  # a replay buffer to sample from
    plan = resolve_plan(
        TrainConfig(algo=algo, env_id=env_id, seed=0, total_timesteps=10**7,
                    hyperparams=hp, output_dir=root, log_sinks=("json",))
    )  # fmt: skip
    session = Session.open(plan, CompositeLogger({}))
    return session, trainer_class(plan.spec)(session)


def env_step(session: Session[Any], rng: np.random.Generator, n_actions: int) -> Callable[[], Any]:
    stepper, n = session.stepper, session.hp.num_envs
    return lambda: stepper.step(rng.integers(0, n_actions, n))


def floor_ppo(session: Session[Any], trainer: Any, iterations: int) -> dict[str, Any]:
    hp, agent, g = session.hp, trainer.agent, session.generator
    rng = np.random.default_rng(0)
    collect_rollout(session, agent, trainer.buffer, hp.n_steps)  # a rollout to learn from
    obs = trainer.buffer.obs[: hp.n_steps].flatten(0, 1)
    actions = trainer.buffer.actions[: hp.n_steps].reshape(-1)
    mb = torch.randperm(len(obs), generator=g)[: hp.batch_size]

    def minibatch() -> None:
        logp, entropy, value = agent.evaluate_actions(obs[mb], actions[mb])
        loss = -logp.mean() + hp.ent_coef * -entropy.mean() + hp.vf_coef * value.square().mean()
        trainer.optimizer.step(loss, hp.max_grad_norm)

    whole = timed(trainer.iteration, iterations, 1)
    act = agent.rollout_act()
    state = session.stepper.obs
    parts = {
        "env step (vector)": (timed(env_step(session, rng, 4), 64), hp.n_steps),
        "policy forward": (timed(lambda: act(state, g), 64), hp.n_steps),
        "minibatch update": (timed(minibatch, 4, 3), hp.n_epochs * len(obs) // hp.batch_size),
    }
    work = flops(minibatch) * parts["minibatch update"][1]
    work += flops(lambda: act(state, g)) * hp.n_steps
    return {"parts": parts, "whole": whole, "steps": hp.n_steps * hp.num_envs, "flops": work}


def floor_dqn(session: Session[Any], trainer: Any, iterations: int) -> dict[str, Any]:
    hp, g = session.hp, session.generator
    for _ in range(2_000):  # rows to sample from, past learning_starts
        trainer.iteration()
    rng = np.random.default_rng(0)
    state = session.stepper.obs
    batch = trainer.buffer.sample(hp.batch_size, g)
    targets = torch.zeros(hp.batch_size, 1)
    taken = torch.nn.functional.one_hot(batch.actions, trainer.n_actions).float()

    def forward() -> None:
        with torch.no_grad():
            trainer.q_net(state).argmax(-1)

    def target() -> None:
        with torch.no_grad():
            trainer.q_target(batch.next_obs).max(-1)

    def update() -> None:
        trainer.write_q_gradient(batch.obs, targets, taken)
        trainer.optimizer.apply_gradient(hp.max_grad_norm)

    # whole iterations: train_freq steps, one of them with its minibatch (first: the
    # env steps below go past the replay buffer, which then takes no more)
    whole = timed(trainer.iteration, iterations * hp.train_freq, 1) * hp.train_freq
    parts = {
        "Q forward (1 stack)": (timed(forward, 64), hp.train_freq),
        "replay sample": (timed(lambda: trainer.buffer.sample(hp.batch_size, g), 64), 1),
        "target forward": (timed(target, 16), 1),
        "forward + backward + Adam": (timed(update, 16), 1),
        "env step": (timed(env_step(session, rng, trainer.n_actions), 64), hp.train_freq),
    }
    work = hp.train_freq * flops(forward) + flops(target) + flops(update)
    return {"parts": parts, "whole": whole, "steps": hp.train_freq, "flops": work}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("algos", nargs="+", choices=["ppo", "dqn"])
    parser.add_argument("--env-id", default="BreakoutNoFrameskip-v4")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--sb3", type=float, nargs="*", default=[],
                        help="SB3's steps/s per algorithm, in the order given")  # fmt: skip
    parser.add_argument("--iterations", type=int, default=None)
    args = parser.parse_args()
    for i, algo in enumerate(args.algos):
        with tempfile.TemporaryDirectory() as tmp:
            session, trainer = open_trainer(algo, args.env_id, args.precision, Path(tmp))
            threads = torch.get_num_threads()
            if algo == "ppo":
                found = floor_ppo(session, trainer, args.iterations or 3)
            else:
                found = floor_dqn(session, trainer, args.iterations or 100)
            session.close()
        floor = sum(seconds * count for seconds, count in found["parts"].values())
        print(f"{algo} {args.env_id} {args.precision}, {threads} threads, one iteration "
              f"({found['steps']} env steps):")  # fmt: skip
        for name, (seconds, count) in found["parts"].items():
            print(f"  {name:28s} {seconds * 1e3:8.2f} ms x {count:4d} = "
                  f"{seconds * count * 1e3:8.1f} ms  ({seconds * count / floor:4.0%})")  # fmt: skip
        print(f"  {'floor (sum of the parts)':28s} {floor * 1e3:27.1f} ms  -> "
              f"{found['steps'] / floor:6.0f} steps/s at most")  # fmt: skip
        print(f"  {'whole iterations':28s} {found['whole'] * 1e3:27.1f} ms  -> "
              f"{found['steps'] / found['whole']:6.0f} steps/s "
              f"(overhead {found['whole'] / floor - 1:+.0%})")  # fmt: skip
        print(f"  matrix work {found['flops'] / 1e9:.2f} GFLOP an iteration: "
              f"{found['flops'] / floor / 1e9:.0f} GFLOP/s over the floor")  # fmt: skip
        if i < len(args.sb3):
            sb3 = args.sb3[i]
            print(f"  vs SB3 at {sb3:.0f} steps/s: floor {found['steps'] / floor / sb3:.2f}x, "
                  f"whole iterations {found['steps'] / found['whole'] / sb3:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
