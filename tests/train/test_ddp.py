"""Lightning DDP (ddp_spawn, 2 processes over gloo) follows the 1-process loss curve for the same
global batch, up to float32 reduction order."""

import pytest

from .conftest import TINY_LM, read_metrics, run_cli, run_main


def test_two_process_ddp_matches_one_process_with_the_same_global_batch(tmp_path):
    common = [*TINY_LM, "data.batch_size=8", "trainer.accelerator=cpu", "trainer.max_steps=4"]
    one, two = tmp_path / "one", tmp_path / "two"
    run_main(*common, f"hydra.run.dir={one}")
    done = run_cli(*common, "trainer.strategy=ddp_spawn", "trainer.devices=2", f"hydra.run.dir={two}", timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "distributed_backend=gloo" in done.stderr and "All distributed processes registered" in done.stderr
    for key in ("train/loss", "val/loss"):
        a, b = read_metrics(one, key), read_metrics(two, key)
        assert sorted(a) == sorted(b) and a
        for step in a:
            assert b[step] == pytest.approx(a[step], rel=1e-5, abs=1e-6), (key, step)
