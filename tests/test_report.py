"""``rl-train report`` on tiny real runs: the numbers recomputed from the JSONL here."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread
from scipy import stats

from rl_training import TrainConfig, create_run, train
from rl_training.cli import main
from rl_training.testing import read_jsonl

TINY = {
    "ppo": {"num_envs": 2, "n_steps": 64, "batch_size": 64, "n_epochs": 1},
    "a2c": {"num_envs": 2, "n_steps": 8},
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """Two algorithms x two seeds on CartPole, a custom loop with episodes, one without."""
    root = tmp_path_factory.mktemp("report") / "runs"
    for algo, hp in TINY.items():
        for seed in (0, 1):
            train(TrainConfig(algo=algo, env_id="CartPole-v1", seed=seed, total_timesteps=1536,
                              output_dir=root, device="cpu", log_sinks=["json"],
                              hyperparams=hp))  # fmt: skip
    with create_run("custom-loop", {"seed": 5}, output_dir=root, log_sinks="json") as run:
        for step in range(1, 40):
            run.logger.log_metrics({"episode/return": float(step % 7), "loss": 0.1}, step * 10)
    with create_run("no-episodes", output_dir=root, log_sinks="json") as run:
        run.logger.log_metrics({"loss": 1.0}, 1)
    return root


def expected(run_dir: Path, window: int) -> tuple[float, float, int]:
    """(final, best, episodes) from the JSONL, the straightforward way."""
    returns = [r["episode/return"] for r in read_jsonl(run_dir / "metrics.jsonl")
               if "episode/return" in r]  # fmt: skip
    means = [float(np.mean(returns[max(0, k - window) : k])) for k in range(1, len(returns) + 1)]
    return means[-1], max(means), len(returns)


def test_report_prints_per_seed_returns_and_the_iqm_with_its_interval(runs, tmp_path, capsys):
    """rl-train report prints each seed's returns and each group's IQM with its CI; saves both."""
    out = tmp_path / "out"
    assert main(["report", str(runs), "--out", str(out), "--window", "20"]) == 0
    printed, warned = capsys.readouterr()
    # The run without episode/return is named and skipped; nothing else is.
    skipped = [line for line in warned.splitlines() if "skipped" in line]
    assert len(skipped) == 1 and "no-episodes-" in skipped[0] and "episode/return" in skipped[0]

    saved = json.loads((out / "report.json").read_text())
    groups = {(g["algo"], g["env_id"]): g for g in saved["groups"]}
    assert set(groups) == {("a2c", "CartPole-v1"), ("ppo", "CartPole-v1"), ("custom-loop", "-")}
    lines = printed.splitlines()
    for (algo, env_id), group in groups.items():
        header = lines.index(
            next(line for line in lines if line.startswith(f"{algo} on {env_id}:"))
        )
        finals = []
        for i, run in enumerate(group["runs"]):
            final, best, episodes = expected(Path(run["run_dir"]), 20)
            finals.append(final)
            seed, shown_final, shown_best, shown_episodes, _steps, budget, status, name = lines[
                header + 2 + i
            ].split()
            assert name == Path(run["run_dir"]).name
            assert status == run["status"] == "finished" and run["in_iqm"]
            assert budget == ("1536" if algo != "custom-loop" else "?")
            assert (float(shown_final), float(shown_best), int(shown_episodes)) == (
                round(final, 1), round(best, 1), episodes)  # fmt: skip
            assert run["final"] == pytest.approx(final) and run["best"] == pytest.approx(best)
        assert [r["seed"] for r in group["runs"]] == (
            ["0", "1"] if algo != "custom-loop" else ["5"]
        )
        iqm = stats.trim_mean(finals, 0.25)
        assert group["iqm"] == pytest.approx(iqm)
        summary = lines[header + 2 + len(finals)]
        assert summary.startswith(f"  IQM of final returns {iqm:.1f}, 95% CI [")
        if len(finals) > 1:
            low, high = group["ci"]
            assert min(finals) - 1e-9 <= low <= iqm <= high <= max(finals) + 1e-9
        else:  # one run: no interval
            assert group["ci"] == [None, None] and "CI [n/a, n/a]" in summary

    # The PNG: a valid image, one 600x400 panel per env id (CartPole-v1 and "-").
    png = out / "learning_curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = imread(png)
    assert image.shape[:2] == (400, 1200)
    assert image[..., :3].std() > 0.05  # not a blank canvas
    assert f"learning curves: {png} (1200x400)" in printed


def test_one_run_directory_and_the_default_window(runs, tmp_path, capsys):
    """One run directory is a report of its own, over the default 100-episode window."""
    run_dir = next(p for p in runs.iterdir() if p.name.startswith("ppo-CartPole-v1-s1-"))
    assert main(["report", str(run_dir), "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    final, best, episodes = expected(run_dir, 100)
    row = next(line for line in printed.splitlines() if line.endswith(run_dir.name)).split()
    assert row[:4] == ["1", f"{final:.1f}", f"{best:.1f}", str(episodes)]
    assert imread(tmp_path / "learning_curves.png").shape[:2] == (400, 600)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nowhere"], "report: 'nowhere' does not exist (give run directories)"),
        ([], "report: give at least one run directory (or a directory of runs)"),
        (["EMPTY"], "holds no run (no metrics.jsonl in it or its subdirectories"),
        (["RUNS", "--window", "0"], "--window: 0 is not a positive number of episodes"),
        (["NO_EPISODES"], "report: none of the 1 run(s) logged episode/return"),
    ],
)
def test_bad_paths_are_one_line_and_exit_2(runs, tmp_path, capsys, monkeypatch, args, message):
    """A path that holds no runs is one error line, exit 2, and no report written."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "EMPTY").mkdir()
    no_episodes = next(p for p in runs.iterdir() if p.name.startswith("no-episodes-"))
    swap = {"RUNS": str(runs), "NO_EPISODES": str(no_episodes)}
    assert main(["report", *(swap.get(a, a) for a in args)]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "skipped" not in line]
    assert len(errors) == 1 and errors[0].startswith("rl-train: error: ") and message in errors[0]
    assert not (tmp_path / "report").exists()


def test_without_the_report_extra_one_line_names_it(runs, tmp_path):
    """Without scipy, report says in one line which extra to install."""
    code = ("import sys; sys.modules['scipy'] = None; from rl_training.cli import main; "
            f"sys.exit(main(['report', {str(runs)!r}, '--out', {str(tmp_path)!r}]))")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "rl-train: error: rl-train report needs scipy: pip install 'rl-training[report]'"
    ]
    assert not (tmp_path / "learning_curves.png").exists()


def test_unfinished_runs_are_shown_drawn_to_their_length_and_left_out_of_the_iqm(
    runs, tmp_path, capsys
):
    """An interrupted run: its status and budget listed, its curve to its own end, the IQM
    over finished runs unless --include-unfinished (and the output says which)."""
    from rl_training.report import curves, group_runs, read_run

    mine = tmp_path / "runs"
    for source in sorted(runs.glob("ppo-CartPole-v1-*")):
        shutil.copytree(source, mine / source.name)
    short = mine / "ppo-CartPole-v1-s7-interrupted"
    shutil.copytree(next(iter(sorted(mine.iterdir()))), short)
    rows = (short / "metrics.jsonl").read_text().splitlines(keepends=True)
    (short / "metrics.jsonl").write_text("".join(rows[: len(rows) // 2]))
    info = json.loads((short / "run.json").read_text())
    (short / "run.json").write_text(json.dumps({**info, "status": "interrupted", "seed": 7}))

    assert main(["report", str(mine), "--out", str(tmp_path / "a"), "--window", "5"]) == 0
    printed = capsys.readouterr().out
    row = next(line for line in printed.splitlines() if line.endswith(short.name)).split()
    assert row[0] == "7" and row[5:7] == ["1536", "interrupted"]
    saved = json.loads((tmp_path / "a" / "report.json").read_text())["groups"][0]
    finals = [r["final"] for r in saved["runs"] if r["status"] == "finished"]
    assert saved["iqm"] == pytest.approx(stats.trim_mean(finals, 0.25)) and len(finals) == 2
    assert "over 2 finished run(s); 1 unfinished left out (--include-unfinished" in printed

    assert main(["report", str(mine), "--out", str(tmp_path / "b"), "--window", "5",
                 "--include-unfinished"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    saved = json.loads((tmp_path / "b" / "report.json").read_text())["groups"][0]
    assert saved["iqm"] == pytest.approx(stats.trim_mean([r["final"] for r in saved["runs"]],
                                                         0.25))  # fmt: skip
    assert "over 3 run(s)" in printed and all(r["in_iqm"] for r in saved["runs"])

    (group,) = group_runs(read_run(p, 5) for p in sorted(mine.iterdir()))
    steps, mean, low, high = curves(group)
    ends = sorted(int(run.steps[-1]) for run in group.runs)
    assert steps[-1] == ends[-1]  # the longest run is drawn to its end...
    assert np.isfinite(mean).all()  # ...its mean over the runs still there
    assert np.isnan(low[steps > ends[0]]).all() and np.isfinite(low[steps <= ends[0]]).all()


def test_a_last_row_cut_by_a_kill_is_left_out_and_a_broken_row_is_named(runs, tmp_path, capsys):
    """A killed run whose last row (longer than a page) was cut: reported from its whole
    rows, as a resume keeps them; a line that is not JSON in the middle is an error."""
    source = next(p for p in runs.iterdir() if p.name.startswith("ppo-CartPole-v1-s0-"))
    cut = tmp_path / "runs" / source.name
    shutil.copytree(source, cut)
    metrics = cut / "metrics.jsonl"
    whole = metrics.read_text()
    metrics.write_text(whole + '{"step":9999,"episode/return":' + "1" * 5000)
    assert main(["report", str(cut), "--out", str(tmp_path / "a")]) == 0
    final, best, episodes = expected(source, 100)
    row = next(line for line in capsys.readouterr().out.splitlines() if line.endswith(cut.name))
    assert row.split()[:4] == ["0", f"{final:.1f}", f"{best:.1f}", str(episodes)]

    lines = whole.splitlines(keepends=True)
    metrics.write_text("".join(lines[:3]) + "{broken\n" + "".join(lines[3:]))
    assert main(["report", str(cut), "--out", str(tmp_path / "b")]) == 2
    assert "metrics.jsonl line 4 is not JSON" in capsys.readouterr().err
