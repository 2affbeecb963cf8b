"""A Hydra app for the parallel launcher's tests: each job records its process, device, threads
and start/end times in its output dir, prints a line, and returns value × 10, raises or dies."""

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig


@dataclass
class AppConfig:
    value: int = 0
    sleep: float = 0.0
    raise_for: list = field(default_factory=list)  # values whose job raises ValueError
    exit_for: list = field(default_factory=list)  # values whose job's process dies (os._exit(3))


ConfigStore.instance().store(name="launcher_app", node=AppConfig)


@hydra.main(version_base="1.3", config_path=None, config_name="launcher_app")
def main(cfg: AppConfig) -> int:
    start = time.time()
    time.sleep(cfg.sleep)
    record = {"pid": os.getpid(), "device": os.environ.get("CUDA_VISIBLE_DEVICES"),
              "threads": os.environ.get("OMP_NUM_THREADS"), "start": start, "end": time.time()}
    Path(HydraConfig.get().runtime.output_dir, "record.json").write_text(json.dumps(record))
    print(f"job says value={cfg.value}", flush=True)
    if cfg.value in cfg.raise_for:
        raise ValueError(f"boom {cfg.value}")
    if cfg.value in cfg.exit_for:
        os._exit(3)
    return cfg.value * 10
