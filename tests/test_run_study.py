"""The study driver (``experiments/studies/run_study.py``): every sweep it would launch is a valid
command of the entry point (composed, typed and converted as the documented commands are), each in
its own folder; ``--dry-run`` prints them with the extra overrides."""

import pytest

from experiments.studies.run_study import STUDIES, main, sweep_commands

from .test_documented_commands import check_train


@pytest.mark.parametrize("study", sorted(STUDIES))
def test_every_sweep_of_a_study_is_a_valid_command_in_its_own_folder(study, tmp_path):
    commands = sweep_commands(study, tmp_path, jobs_per_gpu=3)
    assert len(commands) == len(STUDIES[study].sweeps)
    assert len({folder for _, folder in commands}) == len(commands)
    for argv, folder in commands:
        assert argv[1:4] == ["-m", "fp4train.train", "-m"] and argv[-1] == f"hydra.sweep.dir={folder}"
        assert check_train(argv[3:]) >= 3  # every sweep runs 3 seeds at least


def test_a_bad_sweep_number_is_named(tmp_path):
    with pytest.raises(SystemExit, match="has sweeps 0-1, not 5"):
        sweep_commands("tetrajet_vit_fashion_mnist", tmp_path, 3, only=[5])


def test_dry_run_prints_one_command_per_sweep_with_the_extra_overrides(tmp_path, capsys):
    main(["nvfp4_hybrid_lm", "--out", str(tmp_path), "--dry-run", "--sweeps", "2", "3", "--", "trainer.max_steps=20"])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and all(line.startswith("python -m fp4train.train -m recipe=nvfp4_hybrid_lm") for line in lines)
    assert "quant.rht=false" in lines[0] and "quant.sr=false" in lines[1]
    assert all("trainer.max_steps=20" in line for line in lines)
