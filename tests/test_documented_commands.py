"""Every command the docs give is checked, so that documented commands cannot rot.

Commands are collected from README.md, docs/*.md, the study pages experiments/studies/*/README.md
(fenced shell blocks and inline code) and the
comments of recipes/*.yaml and conf/**/*.yaml: every ``python -m MODULE …`` and every
``fp4train``/``fp4train-compare`` script call. Then, by entry point:

* ``fp4train.train`` / ``fp4train``: Hydra's own command-line parser (which refuses, e.g., ``-m``
  after the overrides), then every job the command would run — a multirun's sweep expanded the
  way Hydra's basic sweeper does it, the recipe's own ``hydra.sweeper.params`` included — is
  composed, typed (``TrainConfig``), checked (``check_config``) and its model built and converted
  to its recipe (``build_converted_model``: a recipe that quantizes nothing fails here). Data are
  not loaded and nothing is trained.
* other ``python -m`` entry points with an argparse ``main``: their parser, on the documented
  arguments (a usage synopsis such as ``[--dtype uint16|uint32]`` is expanded to one concrete
  call with every option).
* ``python -m fp4train.models``: a ``__main__`` that takes no arguments.
* ``python -m pytest PATHS``: the paths exist.

Placeholders (``DIR``, ``<date>``, ``outputs/...``) are plain strings to the parsers, so they need
no skip. Names of an entry point in prose (not commands) are listed in ``NOT_COMMANDS`` with the
reason and left out.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import re
import shlex
import sys
from functools import lru_cache
from pathlib import Path
from unittest import mock

import pytest
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra._internal.utils import get_args_parser
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
from omegaconf import OmegaConf

from fp4train.train import CONF_DIR, build_converted_model, check_config, to_train_config

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), *sorted((REPO / "experiments" / "studies").glob("*/README.md"))]
YAMLS = sorted({p.resolve() for p in [*(REPO / "recipes").glob("*.yaml"), *(REPO / "conf").rglob("*.yaml")]})
# a command starts here: optional VAR=value prefixes, then `python -m module` or a console script
START = re.compile(r"(?:\b[A-Z_][A-Z0-9_]*=\S+\s+)*(?:python -m [\w.]+|(?<![\w/.-])fp4train(?:-compare)?(?![\w/.-]))")
SHELL_FENCES = {"", "bash", "sh", "shell", "console"}
SCRIPTS = {"fp4train": "fp4train.train", "fp4train-compare": "fp4train.compare"}
NOT_COMMANDS = {
    "python -m fp4train.compare": "names the report's entry point in prose; its SOURCE follows in the examples",
    "fp4train-compare": "names the report's console script in prose; its SOURCE follows in the examples",
}


def _commands_in_line(text: str) -> list[str]:
    """The commands in one line of shell: split at ``&&``/``;``, comments dropped."""
    commands = []
    for part in re.split(r"&&|;", re.sub(r"(^|\s)#.*$", "", text)):
        start = START.search(part)
        if start and not part[: start.start()].strip():
            commands.append(part[start.start():].strip())
    return commands


def _join(command: str, continuation: str) -> str:
    """A command and its next line, a trailing shell line continuation (``\\``) dropped."""
    return command.removesuffix("\\").rstrip() + " " + continuation


def markdown_commands(text: str) -> list[str]:
    """Commands in fenced shell blocks (an indented line after a command continues it) and in
    inline code spans (which may wrap a line) outside fences."""
    commands, outside, fence, previous = [], [], None, None
    for line in text.splitlines():
        marker = re.match(r"\s*```(\w*)", line)
        if marker:
            fence = None if fence is not None else marker[1]
            previous = None
            continue
        if fence is None:
            outside.append(line)
        elif fence in SHELL_FENCES:
            found = _commands_in_line(line)
            if found:
                commands += found
                previous = len(commands) - 1
            elif previous is not None and (line[:1].isspace() or commands[previous].endswith("\\")) \
                    and not line.strip().startswith("#") and line.strip():
                commands[previous] = _join(commands[previous], line.strip())
            else:
                previous = None
    for span in re.findall(r"`([^`]+)`", "\n".join(outside)):
        span = " ".join(span.split())
        if START.match(span):
            commands.append(span)
    return commands


def yaml_commands(text: str) -> list[str]:
    """Commands in ``# …`` comment lines: the line itself, or its inline code spans if it has any;
    a command ending in a backslash continues on the next comment line."""
    commands: list[str] = []
    continued = False
    for line in text.splitlines():
        if not line.lstrip().startswith("#"):
            continued = False
            continue
        comment = line.lstrip().lstrip("#")
        if continued:
            commands[-1] = _join(commands[-1], comment.strip())
        else:
            spans = re.findall(r"`([^`]+)`", comment)
            commands += [c for span in spans for c in _commands_in_line(span)] if spans else _commands_in_line(comment)
        continued = bool(commands) and commands[-1].endswith("\\")
    return commands


def documented_commands() -> dict[str, list[str]]:
    """{command: [where it is documented]} over the files named in the module docstring."""
    found: dict[str, list[str]] = {}
    for path in DOCS + YAMLS:
        text = path.read_text()
        for command in markdown_commands(text) if path.suffix == ".md" else yaml_commands(text):
            found.setdefault(command, []).append(str(path.relative_to(REPO)))
    return found


COMMANDS = {c: where for c, where in documented_commands().items() if c not in NOT_COMMANDS}


def split(command: str) -> tuple[str, list[str]]:
    """(module, argv) of a command: env prefixes dropped, scripts mapped to their module."""
    words = shlex.split(command)
    while re.match(r"[A-Z_][A-Z0-9_]*=", words[0]):
        words = words[1:]
    if words[0] == "python":
        assert words[1] == "-m", command
        return words[2], words[3:]
    return SCRIPTS[words[0]], words[1:]


# ---------------------------------------------------------------- the checks, by entry point


@lru_cache(maxsize=None)
def _check_train_job(job: tuple[str, ...]) -> None:
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=list(job))
    cfg.out_dir = "documented-command"  # Hydra sets the run directory at launch
    train_cfg = to_train_config(cfg)
    check_config(train_cfg)
    build_converted_model(train_cfg)


def check_train(argv: list[str]) -> int:
    """Hydra's parser, then each job composed, typed, checked and its model converted; returns
    the number of jobs."""
    try:
        args = get_args_parser().parse_args(argv)
    except SystemExit:
        raise AssertionError(f"Hydra's command-line parser refuses {argv} (flags such as -m go before the overrides)") from None
    parsed = OverridesParser.create().parse_overrides(args.overrides)
    fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        hydra_cfg = compose("train", overrides=fixed, return_hydra_config=True).hydra
    multirun = args.multirun or hydra_cfg.mode == RunMode.MULTIRUN
    if not multirun:
        assert len(fixed) == len(parsed), f"sweep overrides without -m: {args.overrides}"
        _check_train_job(tuple(args.overrides))
        return 1
    # as hydra's BasicSweeper: the config's sweeper params, then the command line's
    sweeper_params = hydra_cfg.sweeper.params
    params = [f"{k}={v}" for k, v in (OmegaConf.to_container(sweeper_params) if sweeper_params else {}).items()]
    batches = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(params + args.overrides), None)
    jobs = [job for batch in batches for job in batch]
    for job in jobs:
        _check_train_job(tuple(job))
    return len(jobs)


class _Parsed(Exception):
    pass


def check_argparse(module: str, argv: list[str]) -> None:
    """The module's ``main()`` up to its ``parse_args`` on ``argv`` (nothing else runs)."""
    real = argparse.ArgumentParser.parse_args

    def parse_and_stop(self, args=None, namespace=None):
        raise _Parsed(real(self, args, namespace))

    main = importlib.import_module(module).main
    with mock.patch.object(argparse.ArgumentParser, "parse_args", parse_and_stop), \
            mock.patch.object(sys, "argv", [module, *argv]):
        try:
            main()
        except _Parsed:
            return
        except SystemExit as e:
            raise AssertionError(f"{module}'s parser refuses {argv} (exit {e.code})") from None
    raise AssertionError(f"{module}.main() returned without parsing its arguments")


def expand_synopsis(argv: list[str]) -> list[str]:
    """One concrete call of a usage synopsis: ``[--x a|b]`` → ``--x a``, ``NAME...`` → ``NAME``."""
    text = " ".join(argv).replace("[", " ").replace("]", " ")
    words = [w.split("|")[0].removesuffix("...") for w in text.split()]
    return [w for w in words if w]


def check_command(command: str) -> None:
    module, argv = split(command)
    if any(w.startswith("[") for w in argv):
        argv = expand_synopsis(argv)
    if module == "fp4train.train":
        check_train(argv)
    elif module == "pytest":
        missing = [a for a in argv if not a.startswith("-") and not (REPO / a.split("::")[0]).exists()]
        assert not missing, f"pytest paths that do not exist: {missing}"
    elif hasattr(importlib.import_module(module), "main"):
        check_argparse(module, argv)
    else:
        assert importlib.util.find_spec(f"{module}.__main__") is not None, f"{module} has no __main__"
        assert not argv, f"{module} takes no arguments, the docs give {argv}"


# ---------------------------------------------------------------- the tests


@pytest.mark.parametrize("command", sorted(COMMANDS), ids=lambda c: c[:80])
def test_documented_command(command):
    if "launcher=slurm" in command and importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is None:
        pytest.skip('needs the slurm extra: pip install -e ".[slurm]"')
    try:
        check_command(command)
    except Exception as e:
        raise AssertionError(f"documented in {COMMANDS[command]}: {command}\n{type(e).__name__}: {e}") from e


def test_the_prose_mentions_left_out_are_still_in_the_docs():
    # a stale entry here would hide nothing, but would no longer say anything true
    assert set(NOT_COMMANDS) <= set(documented_commands())


def test_the_docs_give_the_commands_the_checker_must_see():
    # the extraction itself: a few commands that must be found, from each kind of place
    assert {"python -m fp4train.train recipe=quickstart", "fp4train --help",
            "python -m fp4train.train -m recipe=tetrajet_vit quant=bf16,mxfp4,tetrajet,tetrajet_qema,tetrajet_qramping",
            "PYTHONUNBUFFERED=1 python -m experiments.bench.run --out experiments/bench/results",
            "python -m fp4train.data.text prepare --out DIR [--dtype uint8|uint16|uint32] [--val-fraction 0.05] "
            "[--block-size 16384] [--suffix .txt ...] FILES_OR_DIRS...",
            } <= set(COMMANDS)
    assert "recipes/tetrajet_vit.yaml" in COMMANDS["python -m fp4train.train recipe=tetrajet_vit"]
    assert not [c for c in COMMANDS if c.startswith("fp4train/")]  # paths in the layout block are not commands


def test_yaml_extraction_joins_backslash_continuations():
    text = "\n".join([
        "# made once, then:",
        "#   python -m fp4train.train -m recipe=x \\",
        "#       quant=bf16,mxfp4 seed=0,1",
        "# One run: `python -m fp4train.train quant=nvfp4` inside an allocation",
        "key: value  # python -m not.in.a.comment.line",
    ])
    assert yaml_commands(text) == ["python -m fp4train.train -m recipe=x quant=bf16,mxfp4 seed=0,1",
                                   "python -m fp4train.train quant=nvfp4"]


def test_markdown_extraction_joins_wrapped_lines_and_drops_comments():
    text = "\n".join([
        "Run `python -m fp4train.compare multirun/x\n--out report/` later.",
        "```bash",
        "pip install -e . && python -m fp4train.train quant=nvfp4   # a comment",
        "  python -m fp4train.data.text prepare --out DIR",
        "         [--dtype uint16] FILES...",
        "python -m fp4train.train -m quant=bf16,nvfp4 \\",
        "    seed=0,1",
        "                                         # a comment line",
        "```",
        "```python",
        "python -m not.a.command",
        "```",
    ])
    assert markdown_commands(text) == [
        "python -m fp4train.train quant=nvfp4",
        "python -m fp4train.data.text prepare --out DIR [--dtype uint16] FILES...",
        "python -m fp4train.train -m quant=bf16,nvfp4 seed=0,1",
        "python -m fp4train.compare multirun/x --out report/",
    ]


@pytest.mark.parametrize(
    "command, error",
    [
        ("python -m fp4train.train recipe=nvfp4_hybrid_lm -m quant=bf16,fp8,nvfp4", "flags such as -m go before the overrides"),
        ("python -m fp4train.train quant=bf16,fp8", "sweep overrides without -m"),
        ("python -m fp4train.train quant=nvfp5", "Could not find 'quant/nvfp5'"),
        ("python -m fp4train.train quant=nvfp4 quant.bf16_first_blocks=5 quant.bf16_last_blocks=5", "quantized none"),
        ("python -m fp4train.train -m quant=bf16,nvfp4 quant.bf16_first_blocks=9", "quantized none"),
        ("python -m fp4train.train model=vit", "needs vision data"),
        ("python -m fp4train.compare", "parser refuses []"),
        ("python -m fp4train.compare multirun/x --no-such-flag", "parser refuses"),
        ("python -m fp4train.data.text prepare [--dtype uint17] FILE", "parser refuses"),
        ("python -m fp4train.models --size micro", "takes no arguments"),
        ("python -m pytest tests/no_such_dir", "do not exist"),
    ],
)
def test_the_checker_refuses_a_broken_command(command, error):
    with pytest.raises(Exception, match=re.escape(error)):
        check_command(command)


def test_a_sweep_is_expanded_into_its_jobs():
    assert check_train(["-m", "recipe=nvfp4_hybrid_lm", "quant.rht=true,false", "quant.sr=true,false"]) == 4
    assert check_train(["recipe=quickstart"]) == 3  # the recipe's own hydra.sweeper.params
