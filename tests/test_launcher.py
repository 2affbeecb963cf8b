"""The parallel launcher (``hydra/launcher=parallel``): jobs side by side, one device each, a log
each, return values collected, failures reported by job. The fp4train sweep: tests/train."""

import json
import os
import sys

import pytest

from hydra_plugins.fp4train_launcher.parallel_launcher import TaskRef, device_slots, visible_gpus

from . import launcher_app


def run_app(*overrides):
    old = sys.argv
    sys.argv = ["launcher_app", "-m", "hydra/launcher=parallel", *overrides]
    try:
        launcher_app.main()
    finally:
        sys.argv = old


def records(sweep):
    return {int(p.parent.name): json.loads(p.read_text()) for p in sweep.glob("*/record.json")}


def test_jobs_run_side_by_side_with_one_device_and_one_log_each(tmp_path):
    run_app(f"hydra.sweep.dir={tmp_path}", "hydra.launcher.gpus=[5,7]", "hydra.launcher.threads_per_job=3",
            "sleep=1.5", "value=1,2,3")
    rec = records(tmp_path)
    assert sorted(rec) == [0, 1, 2] and len({r["pid"] for r in rec.values()}) == 3
    assert (rec[0]["device"], rec[1]["device"]) == ("5", "7")  # one GPU each, interleaved
    assert rec[2]["device"] in ("5", "7") and all(r["threads"] == "3" for r in rec.values())
    assert rec[0]["start"] < rec[1]["end"] and rec[1]["start"] < rec[0]["end"]  # side by side
    assert rec[2]["start"] >= min(rec[0]["end"], rec[1]["end"])  # two slots: the third waited
    for job in range(3):
        assert f"job says value={job + 1}" in (tmp_path / str(job) / "job.log").read_text()
    summary = json.loads((tmp_path / "parallel_jobs.json").read_text())
    assert [(s["job"], s["status"], s["return_value"], s["device"]) for s in summary] == [
        (0, "completed", 10, "5"), (1, "completed", 20, "7"), (2, "completed", 30, rec[2]["device"])]
    assert not (tmp_path / ".parallel").exists()  # the job payloads are gone


def test_failures_are_reported_by_job_after_every_job_ran(tmp_path, capsys):
    with pytest.raises(SystemExit):  # Hydra's exit after the sweeper raised the first failure
        run_app(f"hydra.sweep.dir={tmp_path}", "hydra.launcher.cpu_jobs=3", "hydra.launcher.gpus=[]",
                "raise_for=[2]", "exit_for=[3]", "value=1,2,3")
    summary = {s["job"]: s for s in json.loads((tmp_path / "parallel_jobs.json").read_text())}
    assert summary[0]["status"] == "completed" and summary[0]["return_value"] == 10
    log1, log2 = tmp_path / "1" / "job.log", tmp_path / "2" / "job.log"
    assert summary[1]["error"] == f"job 1 (raise_for=[2] exit_for=[3] value=2) raised ValueError: boom 2 (traceback in {log1})"
    assert "Traceback" in log1.read_text() and "ValueError: boom 2" in log1.read_text()
    assert summary[2]["exit_code"] == 3
    assert summary[2]["error"].startswith(f"job 2 (raise_for=[2] exit_for=[3] value=3) exited with code 3 "
                                          f"before reporting a result; its log {log2} ends with:")
    assert "job says value=3" in summary[2]["error"]
    assert "JobFailedError: job 1 (raise_for=[2] exit_for=[3] value=2) raised" in capsys.readouterr().err  # what Hydra prints: the first failure


def test_device_slots_put_jobs_per_gpu_on_each_gpu_interleaved():
    assert device_slots(["0", "1"], 3, 2) == ["0", "1", "0", "1", "0", "1"]
    assert device_slots([], 3, 2) == [None, None]
    with pytest.raises(ValueError, match=r"jobs_per_gpu and cpu_jobs must be >= 1, got 0 and 2"):
        device_slots(["0"], 0, 2)


def test_visible_gpus_follow_the_list_then_cuda_visible_devices(monkeypatch):
    assert visible_gpus([0, "3"]) == ["0", "3"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2, 5")
    assert visible_gpus() == ["2", "5"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert visible_gpus() == []


def test_task_is_found_by_name_behind_hydra_main():
    ref = TaskRef.of(launcher_app.main.__wrapped__)
    assert (ref.module, ref.qualname, ref.unwrap, ref.main) == ("tests.launcher_app", "main", 1, False)
    assert ref.resolve() is launcher_app.main.__wrapped__

    def local_task(cfg):
        return 0

    with pytest.raises(ValueError, match=r"local_task is not a module-level function"):
        TaskRef.of(local_task)
