"""Metric loggers of a run beside Lightning's own: the CSV log that a resumed run continues.

Lightning's ``CSVLogger`` deletes ``metrics.csv`` when its directory is not empty, so a run
resumed into its own directory lost the history before the checkpoint. ``ResumableCSVLogger``
keeps the rows of the steps before ``resume_step`` (the checkpoint's step) and appends after
them; rows at or after it (written by the interrupted run past its checkpoint) are dropped,
since the resumed run logs those steps again.
"""

from __future__ import annotations

import csv
import os

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment

__all__ = ["ResumableCSVLogger"]


class _ContinuingWriter(ExperimentWriter):
    """``ExperimentWriter`` that starts from the existing file's rows of steps < ``resume_step``."""

    def __init__(self, log_dir: str, resume_step: int) -> None:
        self.resume_step = resume_step
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:  # called by __init__ in place of deleting the file
        if not os.path.isfile(self.metrics_file_path):
            return
        with open(self.metrics_file_path, newline="") as f:
            reader = csv.DictReader(f)
            keys = sorted(reader.fieldnames or [])  # Lightning's column order
            rows = [r for r in reader if r.get("step") not in (None, "") and int(r["step"]) < self.resume_step]
        if not rows:
            os.remove(self.metrics_file_path)
            return
        with open(self.metrics_file_path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=keys)
            writer.writeheader()
            writer.writerows(rows)
        self.metrics_keys = keys


class ResumableCSVLogger(CSVLogger):
    """``CSVLogger`` writing ``<save_dir>/csv/metrics.csv``, continuing it from ``resume_step``
    (0: a fresh file)."""

    def __init__(self, save_dir: str, resume_step: int = 0) -> None:
        super().__init__(save_dir=save_dir, name="csv", version="")
        self.resume_step = resume_step

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ContinuingWriter(self.log_dir, self.resume_step)
        return self._experiment
