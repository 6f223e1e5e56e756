import csv

from rl_training.testing import SinkContract


class TestCsvSink(SinkContract):
    sink_name = "csv"

    def read_back(self, run_context):
        """Every non-empty cell of progress.csv as (step, value) per column."""
        with open(run_context.run_dir / "progress.csv", newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        booleans = {"True": 1.0, "False": 0.0}
        return {
            key: [(int(row["step"]), booleans.get(row[key]) or float(row[key])) for row in rows
                  if row[key] != ""]
            for key in rows[0] if key not in ("step", "time")
        } if rows else {}  # fmt: skip
