"""Run a Hydra sweep's jobs side by side: each job a subprocess with its own
``CUDA_VISIBLE_DEVICES`` and its own log file, ``jobs_per_gpu`` jobs on each GPU at once (on a
machine without a GPU, ``cpu_jobs`` at once). Picked with ``launcher=parallel``
(conf/launcher/parallel.yaml) or Hydra's own ``hydra/launcher=parallel``.

The parent composes every job's config exactly as Hydra's basic launcher does
(``load_sweep_config``, ``hydra.job.num``), fixes the sweep directory, pickles the config, the
Hydra context and Hydra's singletons, and starts ``python -c`` workers that restore them and call
Hydra's ``run_job`` with the task function, which they import by name (a task defined inside
another function cannot be run). Each worker writes its ``JobReturn`` back. The design follows
hydra-joblib-launcher's ``execute_job``, with plain subprocesses instead of joblib, so that every
job gets its own device and log.

Job ``k`` of a sweep writes everything it prints to ``<its output dir>/job.log``; the parent logs
one line when a job starts and one when it ends, then a table of every job (device, status,
seconds, return value, log) which it also writes to ``<sweep dir>/parallel_jobs.json``. A job that
raises, or whose process dies, is reported by number, overrides and log file; Hydra's sweeper then
raises the first failure once all jobs have ended.

Why here: Hydra finds launchers by importing every module of the ``hydra_plugins`` namespace
package and accepts only plugin classes defined there. The module imports nothing of fp4train (nor
torch, unless it must count GPUs), so that a worker starts light; and it has no ``from __future__
import annotations``, since Hydra's scanner runs it before it is in ``sys.modules``, where
dataclasses look up string annotations.
"""

import importlib
import importlib.util
import json
import logging
import math
import os
import pickle
import sys
import time
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from subprocess import STDOUT, Popen
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.basecontainer import BaseContainer

__all__ = [
    "JobFailedError", "JobOutcome", "ParallelLauncher", "ParallelLauncherConf", "TaskRef", "device_slots",
    "launch_parallel", "run_job_file", "visible_gpus",
]

log = logging.getLogger(__name__)
JOB_LOG = "job.log"
SUMMARY = "parallel_jobs.json"
MAX_UNWRAP = 8
# the worker: the parent's import path first, then this module
WORKER = ("import sys; sys.path[:0] = sys.argv[3:]; "
          "from hydra_plugins.fp4train_launcher.parallel_launcher import run_job_file; run_job_file(*sys.argv[1:3])")


@dataclass(frozen=True)
class TaskRef:
    """Where a worker finds the task function: ``module`` (an import name, or ``None`` with
    ``file`` for a script run as ``python script.py``), ``qualname``, how many ``__wrapped__``
    links (``hydra.main``'s decorator) lead from the module attribute to the function, and whether
    the parent ran that module as ``__main__`` (then the worker's ``__main__`` is that module, as
    in multiprocessing's spawn, so that classes pickled as ``__main__.X`` are found)."""

    module: str | None
    file: str | None
    qualname: str
    unwrap: int
    main: bool

    @classmethod
    def of(cls, task: Callable) -> "TaskRef":
        """The reference of ``task``, checked by resolving it in this process."""
        module = sys.modules.get(task.__module__)
        if module is None or "<locals>" in task.__qualname__:
            raise ValueError(
                f"the parallel launcher imports the task function by name in each job's process; "
                f"{task.__module__}.{task.__qualname__} is not a module-level function"
            )
        name, main = task.__module__, task.__module__ == "__main__"
        if main:
            spec = getattr(module, "__spec__", None)
            name = spec.name if spec is not None else None
        obj = getattr(module, task.__qualname__, None)
        for depth in range(MAX_UNWRAP):
            if obj is task:
                return cls(name, getattr(module, "__file__", None), task.__qualname__, depth, main)
            obj = getattr(obj, "__wrapped__", None)
        raise ValueError(
            f"the parallel launcher cannot find the task function {task.__qualname__} as an attribute "
            f"of {task.__module__} (or behind its decorators' __wrapped__)"
        )

    def resolve(self) -> Callable:
        """Import the module (as ``__main__`` too when the parent ran it so) and return the task."""
        if self.module is not None:
            module = importlib.import_module(self.module)
        else:
            spec = importlib.util.spec_from_file_location("__fp4train_task__", self.file)
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module
            spec.loader.exec_module(module)
        if self.main:
            sys.modules["__main__"] = module
        obj = getattr(module, self.qualname)
        for _ in range(self.unwrap):
            obj = obj.__wrapped__
        return obj


class JobFailedError(RuntimeError):
    """A job of a parallel sweep failed: raised by Hydra's sweeper once every job has ended."""


@dataclass
class JobOutcome:
    """One job as the parent saw it. ``job_return``: the worker's, or one made here (FAILED) when
    the process died before writing it."""

    idx: int
    overrides: list[str]
    device: str | None
    log_path: Path
    seconds: float
    exit_code: int
    job_return: JobReturn

    @property
    def failed(self) -> bool:
        return self.job_return.status != JobStatus.COMPLETED

    def error(self) -> str:
        return str(self.job_return._return_value) if self.failed else ""


def visible_gpus(gpus: Sequence[Any] | None = None) -> list[str]:
    """GPU ids for the jobs: ``gpus`` when given, else the entries of ``CUDA_VISIBLE_DEVICES``
    when set (an empty value: none), else ``0 .. torch.cuda.device_count() - 1``."""
    if gpus is not None:
        return [str(g) for g in gpus]
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def device_slots(gpus: Sequence[str], jobs_per_gpu: int, cpu_jobs: int) -> list[str | None]:
    """One entry per job that may run at once: each GPU ``jobs_per_gpu`` times, GPUs interleaved
    (so the first jobs spread over the GPUs); ``cpu_jobs`` entries ``None`` when there is no GPU."""
    if jobs_per_gpu < 1 or cpu_jobs < 1:
        raise ValueError(f"hydra.launcher.jobs_per_gpu and cpu_jobs must be >= 1, got {jobs_per_gpu} and {cpu_jobs}")
    if not gpus:
        return [None] * cpu_jobs
    return [g for _ in range(jobs_per_gpu) for g in gpus]


def _job_config(hydra_context: HydraContext, config: DictConfig, overrides: Sequence[str], idx: int,
                sweep_dir: str) -> tuple[DictConfig, Path]:
    """A job's composed config (as Hydra's basic launcher makes it; the sweep directory fixed to
    the parent's, so that a ``${now:...}`` in it cannot differ in the worker) and its output dir."""
    job_cfg = hydra_context.config_loader.load_sweep_config(config, list(overrides))
    with open_dict(job_cfg):
        job_cfg.hydra.job.id = idx
        job_cfg.hydra.job.num = idx
        job_cfg.hydra.sweep.dir = sweep_dir
    hydra_config = HydraConfig.instance()
    original = hydra_config.cfg
    hydra_config.set_config(job_cfg)
    try:
        subdir = str(OmegaConf.select(job_cfg, "hydra.sweep.subdir"))
    finally:
        hydra_config.cfg = original
    return job_cfg, Path(sweep_dir, subdir)


def run_job_file(payload_path: str, result_path: str) -> None:
    """Worker side: restore Hydra's state from the payload, run the job, write its ``JobReturn``.
    A failed task's traceback goes to the job's log; the process exits 1 after a failure."""
    with open(payload_path, "rb") as f:
        task = pickle.load(f).resolve()  # first: the task's module registers its configs and resolvers
        payload = pickle.load(f)
    setup_globals()
    Singleton.set_state({"instances": payload["singletons"], "omegaconf_resolvers": BaseContainer._resolvers})
    ret = run_job(task_function=task, config=payload["config"], job_dir_key="hydra.sweep.dir",
                  job_subdir_key="hydra.sweep.subdir", hydra_context=payload["hydra_context"])
    if ret.status != JobStatus.COMPLETED:
        error = ret._return_value
        traceback.print_exception(type(error), error, error.__traceback__)
    # plain copies of the configs: their structured types (a plugin's config class, which Hydra's
    # plugin scan has defined twice in this process) need not be importable by the parent
    ret.cfg, ret.hydra_cfg = (None if c is None else OmegaConf.create(OmegaConf.to_container(c))
                              for c in (ret.cfg, ret.hydra_cfg))
    try:
        data = pickle.dumps(ret)
    except Exception:  # an unpicklable return value or exception: send its text
        value = ret._return_value
        failed = ret.status != JobStatus.COMPLETED
        ret._return_value = RuntimeError(f"{type(value).__name__}: {value}") if failed else repr(value)
        data = pickle.dumps(ret)
    Path(result_path).write_bytes(data)
    sys.stdout.flush()
    sys.stderr.flush()
    if ret.status != JobStatus.COMPLETED:
        raise SystemExit(1)


def _log_tail(path: Path, lines: int = 5) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _env(device: str | None, threads: int | None) -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if device is not None:
        env["CUDA_VISIBLE_DEVICES"] = device
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def launch_parallel(
    hydra_context: HydraContext,
    config: DictConfig,
    task_function: Callable,
    job_overrides: Sequence[Sequence[str]],
    initial_job_idx: int,
    gpus: Sequence[Any] | None = None,
    jobs_per_gpu: int = 1,
    cpu_jobs: int = 2,
    threads_per_job: int | None = None,
    poll_seconds: float = 0.5,
) -> list[JobOutcome]:
    """Run the jobs ``job_overrides`` (numbered from ``initial_job_idx``) on ``device_slots``,
    starting the next job whenever one ends; returns their outcomes in job order.

    ``threads_per_job``: ``OMP_NUM_THREADS`` of each job; ``None``: CPU cores // jobs at once,
    unless ``OMP_NUM_THREADS`` is already set. On an exception here (Ctrl-C), the running jobs
    get SIGTERM (Lightning saves a checkpoint) and are waited for."""
    task = TaskRef.of(task_function)
    sweep_dir = Path(str(config.hydra.sweep.dir))
    sweep_dir.mkdir(parents=True, exist_ok=True)
    work = sweep_dir / ".parallel"
    work.mkdir(exist_ok=True)
    slots = device_slots(visible_gpus(gpus), jobs_per_gpu, cpu_jobs)
    parallel = min(len(slots), len(job_overrides))
    if threads_per_job is None and "OMP_NUM_THREADS" not in os.environ:
        threads_per_job = max(1, (os.cpu_count() or 1) // max(parallel, 1))
    where = f"GPUs {sorted(set(slots))} × {jobs_per_gpu}" if slots[0] is not None else f"CPU × {len(slots)}"
    log.info(f"Parallel launcher: {len(job_overrides)} jobs on {where} at once; sweep dir {sweep_dir}")
    singletons = Singleton.get_state()["instances"]

    queue = deque()
    for offset, overrides in enumerate(job_overrides):
        idx = initial_job_idx + offset
        job_cfg, out_dir = _job_config(hydra_context, config, overrides, idx, str(sweep_dir))
        payload = work / f"job_{idx}.pkl"
        with payload.open("wb") as f:  # the task first: the worker imports its module before the rest
            pickle.dump(task, f)
            pickle.dump({"config": job_cfg, "hydra_context": hydra_context, "singletons": singletons}, f)
        queue.append((idx, list(overrides), out_dir, payload))

    free, running, outcomes = list(slots), {}, {}
    try:
        while queue or running:
            while queue and free:
                idx, overrides, out_dir, payload = queue.popleft()
                device = free.pop(0)
                out_dir.mkdir(parents=True, exist_ok=True)
                log_path = out_dir / JOB_LOG
                result = work / f"job_{idx}.result"
                with log_path.open("w") as log_file:
                    proc = Popen([sys.executable, "-c", WORKER, str(payload), str(result),
                                  *[p or os.getcwd() for p in sys.path]],
                                 stdout=log_file, stderr=STDOUT, stdin=None, env=_env(device, threads_per_job))
                running[proc] = (idx, overrides, device, log_path, result, time.perf_counter())
                on = f"GPU {device}" if device is not None else "CPU"
                log.info(f"\t#{idx} on {on}: {' '.join(filter_overrides(overrides))} (log: {log_path})")
            for proc in [p for p in running if p.poll() is not None]:
                idx, overrides, device, log_path, result, start = running.pop(proc)
                free.append(device)
                (work / f"job_{idx}.pkl").unlink()
                outcome = _outcome(idx, overrides, device, log_path, result, time.perf_counter() - start,
                                   proc.returncode)
                outcomes[idx] = outcome
                state = "FAILED" if outcome.failed else "done"
                log.info(f"\t#{idx} {state} after {outcome.seconds:.0f} s (exit code {proc.returncode})")
            time.sleep(poll_seconds if running else 0)
    except BaseException:
        for proc in running:
            proc.terminate()
        for proc in running:
            proc.wait()
        raise
    work.rmdir()
    ordered = [outcomes[i] for i in sorted(outcomes)]
    _report(ordered, sweep_dir)
    return ordered


def _outcome(idx: int, overrides: list[str], device: str | None, log_path: Path, result: Path,
             seconds: float, exit_code: int) -> JobOutcome:
    """The job's ``JobReturn``; a failure's error names the job, its overrides and its log."""
    job = f"job {idx} ({' '.join(filter_overrides(overrides))})"
    if result.is_file():
        job_return = pickle.loads(result.read_bytes())
        result.unlink()
        if job_return.status != JobStatus.COMPLETED:
            cause = job_return._return_value
            error = JobFailedError(f"{job} raised {type(cause).__name__}: {cause} (traceback in {log_path})")
            error.__cause__ = cause
            job_return.return_value = error
    else:
        job_return = JobReturn(overrides=overrides, status=JobStatus.FAILED)
        job_return.return_value = JobFailedError(
            f"{job} exited with code {exit_code} before reporting a result; its log {log_path} ends with:\n"
            f"{_log_tail(log_path)}"
        )
    return JobOutcome(idx, overrides, device, log_path, seconds, exit_code, job_return)


def _report(outcomes: list[JobOutcome], sweep_dir: Path) -> None:
    """Log a table of the jobs (their overrides that differ) and merge them by job number into
    ``<sweep_dir>/parallel_jobs.json`` (every override, device, status, seconds, return value, log)."""
    shared = set.intersection(*(set(o.overrides) for o in outcomes)) if len(outcomes) > 1 else set()
    lines = ["| job | overrides | device | status | seconds | return value or error | log |",
             "|---:|---|---|---|---:|---|---|"]
    records = []
    for o in outcomes:
        value = None if o.failed else o.job_return._return_value
        shown = value if isinstance(value, (int, float, str, type(None))) else repr(value)
        if isinstance(shown, float) and not math.isfinite(shown):
            shown = repr(shown)  # JSON has no NaN
        status = "FAILED" if o.failed else "completed"
        own = " ".join(x for x in filter_overrides(o.overrides) if x not in shared)
        first_line = o.error().splitlines()[0] if o.failed else shown
        lines.append(f"| {o.idx} | {own} | {o.device or 'cpu'} | {status} | {o.seconds:.0f} | {first_line} "
                     f"| {o.log_path} |")
        records.append({"job": o.idx, "overrides": o.overrides, "device": o.device, "status": status,
                        "seconds": round(o.seconds, 1), "exit_code": o.exit_code, "return_value": shown,
                        "error": o.error(), "log": str(o.log_path)})
    path = sweep_dir / SUMMARY
    old = {r["job"]: r for r in json.loads(path.read_text())} if path.is_file() else {}
    old.update({r["job"]: r for r in records})
    path.write_text(json.dumps([old[k] for k in sorted(old)], indent=1))
    failed = [o for o in outcomes if o.failed]
    log.info("Parallel launcher: %d of %d jobs completed (all: %s)\n%s", len(outcomes) - len(failed),
             len(outcomes), path, "\n".join(lines))
    if failed:
        log.error("Failed jobs: %s; the report of the others: python -m fp4train.compare %s",
                  ", ".join(f"#{o.idx} (log {o.log_path})" for o in failed), sweep_dir)


@dataclass
class ParallelLauncherConf:
    """``gpus``: GPU ids (null: ``CUDA_VISIBLE_DEVICES``, else every GPU torch sees);
    ``jobs_per_gpu``: jobs sharing one GPU at once; ``cpu_jobs``: jobs at once without a GPU;
    ``threads_per_job``: ``OMP_NUM_THREADS`` of each job (null: CPU cores // jobs at once)."""

    _target_: str = "hydra_plugins.fp4train_launcher.parallel_launcher.ParallelLauncher"
    gpus: Optional[List[str]] = None
    jobs_per_gpu: int = 1
    cpu_jobs: int = 2
    threads_per_job: Optional[int] = None


ConfigStore.instance().store(group="hydra/launcher", name="parallel", node=ParallelLauncherConf,
                             provider="fp4train")


class ParallelLauncher(Launcher):
    """A sweep's jobs side by side, each in its own process with its own GPU and log."""

    def __init__(self, gpus: Optional[Sequence[str]] = None, jobs_per_gpu: int = 1, cpu_jobs: int = 2,
                 threads_per_job: Optional[int] = None) -> None:
        self.gpus = None if gpus is None else [str(g) for g in gpus]
        self.jobs_per_gpu, self.cpu_jobs, self.threads_per_job = jobs_per_gpu, cpu_jobs, threads_per_job
        self.config: Optional[DictConfig] = None
        self.hydra_context: Optional[HydraContext] = None
        self.task_function: Optional[TaskFunction] = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        assert self.config is not None and self.hydra_context is not None and self.task_function is not None
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        outcomes = launch_parallel(self.hydra_context, self.config, self.task_function, job_overrides,
                                   initial_job_idx, self.gpus, self.jobs_per_gpu, self.cpu_jobs,
                                   self.threads_per_job)
        return [o.job_return for o in outcomes]
