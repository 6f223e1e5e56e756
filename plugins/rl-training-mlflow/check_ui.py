"""Start ``mlflow ui`` on an output directory's store, as the README says, and check
that it opens the runs the sink wrote: ``python check_ui.py RUNS_DIR``.

CI runs it in the environment the README's commands made (the plugin installed, a
run, then the ``ui`` extra installed): exit status 0 when the UI lists every run of
the store, FINISHED, with its metrics; 1 with the reason otherwise.

:class:`Server` (``mlflow server`` or ``mlflow ui`` in a process group of its own, on
a free port of 127.0.0.1) is also what the tests and ``benchmarks/bench_delivery.py
--mlflow-server`` start and kill.
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
from typing import Any

ENV = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1"}


class Server:
    """``mlflow server`` (or ``mlflow ui`` with ``ui=True``) on a free port, storing in
    ``root / "mlflow.db"`` (or ``store``), artifacts under ``root / "artifacts"``; its
    output, uvicorn's access log included (one line per request), in ``log``."""

    def __init__(self, root: Path, *, ui: bool = False, store: Path | None = None) -> None:
        self.root, self.ui = Path(root), ui
        self.store = Path(store or self.root / "mlflow.db").resolve()
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.uri = f"http://127.0.0.1:{self.port}"
        self.log = self.root / ("mlflow-ui.log" if ui else "server.log")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 90.0) -> None:
        """Start it and wait until it answers ``/health``.

        Raises:
            AssertionError: it exited, or did not answer within ``timeout`` s (its
                output is in the message).
        """
        command = [str(Path(sys.executable).with_name("mlflow")), "ui" if self.ui else "server",
                   "--backend-store-uri", f"sqlite:///{self.store}",
                   "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"]  # fmt: skip
        if not self.ui:
            command += ["--artifacts-destination", str(self.root / "artifacts")]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=ENV,
                                         start_new_session=True)  # fmt: skip
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc.poll() is None, f"mlflow exited:\n{self.log.read_text()}"
            assert time.monotonic() < deadline, (
                f"mlflow silent for {timeout:g} s:\n{self.log.read_text()}"
            )
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2):
                    return
            except (urllib.error.URLError, OSError):
                time.sleep(0.2)

    def kill(self) -> None:
        """SIGKILL its whole process group (uvicorn's workers too)."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:  # it exited, and its group with it
            pass
        self.proc.wait(timeout=30)

    def requests(self, kind: str) -> int:
        """How many access-log lines hold ``kind`` (``'"POST /api/2.0/mlflow/...'``)."""
        return self.log.read_text(errors="replace").count(kind)

    def post(self, endpoint: str, body: dict[str, Any] | None, query: str = "") -> Any:
        """The JSON answer of ``/api/2.0/mlflow/<endpoint>`` (GET when ``body`` is None)."""
        address = f"{self.uri}/api/2.0/mlflow/{endpoint}" + (f"?{query}" if query else "")
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(address, data=data,
                                         headers={"Content-Type": "application/json"})  # fmt: skip
        with urllib.request.urlopen(request, timeout=10) as answer:
            return json.load(answer)


def check_ui(runs_dir: Path) -> list[dict[str, Any]]:
    """The runs ``mlflow ui --backend-store-uri sqlite:///RUNS_DIR/mlflow.db`` lists.

    Raises:
        AssertionError: the UI did not start, or a run is missing, not FINISHED or has
            no metrics.
    """
    ui = Server(Path(runs_dir), ui=True, store=Path(runs_dir) / "mlflow.db")
    try:
        ui.start()
        with urllib.request.urlopen(ui.uri, timeout=10) as page:  # the UI itself
            assert page.status == 200 and b"<html" in page.read(4096).lower()
        experiment = ui.post("experiments/get-by-name", None, "experiment_name=rl-training")
        found = ui.post(
            "runs/search", {"experiment_ids": [experiment["experiment"]["experiment_id"]]}
        )
        runs: list[dict[str, Any]] = found.get("runs", [])
        assert runs, "the UI lists no run"
        for run in runs:
            assert run["info"]["status"] == "FINISHED", run["info"]
            assert run["data"].get("metrics"), f"run {run['info']['run_name']} has no metrics"
        return runs
    finally:
        ui.kill()


if __name__ == "__main__":
    try:
        listed = check_ui(Path(sys.argv[1]))
    except AssertionError as error:
        print(f"check_ui: FAILED: {error}", file=sys.stderr)
        sys.exit(1)
    print(
        f"check_ui: mlflow ui lists {len(listed)} run(s) of {sys.argv[1]}, FINISHED, with metrics"
    )
