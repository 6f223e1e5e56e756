"""Start ``mlflow ui`` on an output directory's store, as the README says, and check
that it opens the runs the sink wrote: ``python check_ui.py RUNS_DIR``.

CI runs it in the environment the README's commands made (the plugin installed, a
run, then the ``ui`` extra installed): exit status 0 when the UI lists every run of
the store, FINISHED, with its metrics; 1 with the reason otherwise.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path


def check_ui(runs_dir: Path) -> list[dict]:
    """The runs ``mlflow ui --backend-store-uri sqlite:///RUNS_DIR/mlflow.db`` lists.

    Raises:
        AssertionError: the UI did not start, or a run is missing, not FINISHED or has
            no metrics.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    command = [str(Path(sys.executable).with_name("mlflow")), "ui", "--backend-store-uri",
               f"sqlite:///{Path(runs_dir).resolve() / 'mlflow.db'}", "--port", str(port),
               "--workers", "1"]  # fmt: skip
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1"}
    log = Path(runs_dir) / "mlflow-ui.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, f"mlflow ui exited:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"mlflow ui silent for 90 s:\n{log.read_text()}"
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2):
                    break
            except (urllib.error.URLError, OSError):
                time.sleep(0.2)
        with urllib.request.urlopen(url, timeout=10) as page:  # the UI itself
            assert page.status == 200 and b"<html" in page.read(4096).lower()
        experiment = _post(url, "experiments/get-by-name", None, "experiment_name=rl-training")
        found = _post(url, "runs/search",
                      {"experiment_ids": [experiment["experiment"]["experiment_id"]]})  # fmt: skip
        runs = found.get("runs", [])
        assert runs, "the UI lists no run"
        for run in runs:
            assert run["info"]["status"] == "FINISHED", run["info"]
            assert run["data"].get("metrics"), f"run {run['info']['run_name']} has no metrics"
        return runs
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:  # it exited, and its group with it
            pass
        proc.wait(timeout=30)


def _post(url: str, endpoint: str, body: dict | None, query: str = "") -> dict:
    address = f"{url}/api/2.0/mlflow/{endpoint}" + (f"?{query}" if query else "")
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(address, data=data,
                                     headers={"Content-Type": "application/json"})  # fmt: skip
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.load(answer)


if __name__ == "__main__":
    try:
        listed = check_ui(Path(sys.argv[1]))
    except AssertionError as error:
        print(f"check_ui: FAILED: {error}", file=sys.stderr)
        sys.exit(1)
    print(
        f"check_ui: mlflow ui lists {len(listed)} run(s) of {sys.argv[1]}, FINISHED, with metrics"
    )
