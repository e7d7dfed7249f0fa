"""``snnl --help`` and every subcommand's help: light, complete, plain text."""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys

import pytest

from snnl.cli import build_parser, common, main

COMMANDS = ("train", "export", "score", "evaluate", "index", "data", "monitor", "serve")
HEAVY = ("torch", "numpy", "onnxruntime", "fastapi", "pydantic", "matplotlib", "sklearn")


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def test_help_imports_no_heavy_library() -> None:
    """Every --help runs in a fresh interpreter without importing torch, numpy, ONNX Runtime,
    FastAPI, pydantic, matplotlib or scikit-learn (what made it take seconds)."""
    script = (
        "import json, sys\n"
        "from snnl.cli import main\n"
        f"for argv in [['--help']] + [[c, '--help'] for c in {list(COMMANDS)!r}]:\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        f"print(json.dumps([m for m in {list(HEAVY)!r} if m in sys.modules]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert json.loads(done.stdout.splitlines()[-1]) == []


def test_no_command_prints_the_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("usage: snnl")
    for command in COMMANDS:
        assert command in captured.err


@pytest.mark.parametrize("command", COMMANDS)
def test_every_option_has_help_and_shows_its_default(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = _subparsers()[command]
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        assert action.help, f"{command} {action.option_strings or action.dest}: no help"
        shown = parser._get_formatter()._expand_help(action)  # what --help prints
        optional = action.option_strings and not action.required
        flag = isinstance(action, argparse._StoreTrueAction)
        if optional and action.default is not None and not flag:
            assert "default" in shown, f"{command} {action.option_strings}: {shown!r}"
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    for markup in ("`", "§", "%(default)"):
        assert markup not in text, f"{command} --help shows {markup!r}"


@pytest.mark.parametrize(
    ("name", "module", "attribute"),
    [
        ("DISTANCES", "snnl.core.distances", "DISTANCES"),
        ("DEVICES", "snnl.model.runtime", "DEVICES"),
        ("ARCHS", "snnl.training.nets", "ARCHS"),
        ("BUILTIN_DATASETS", "snnl.training.data", "BUILTIN_DATASETS"),
        ("DATASET_PARTS", "snnl.training.data", "DATASET_PARTS"),
        ("DEFAULT_FACTOR", "snnl.training.run", "DEFAULT_FACTOR"),
        ("DEFAULT_TEMPERATURE", "snnl.training.run", "DEFAULT_TEMPERATURE"),
        ("NONCONFORMITY_KINDS", "snnl.scoring.nonconformity", "NONCONFORMITY_KINDS"),
        ("DEFAULT_NONCONFORMITY", "snnl.build.assemble", "DEFAULT_NONCONFORMITY"),
        ("DEFAULT_RULE", "snnl.scoring.temperature_rule", "DEFAULT_RULE"),
        ("DEFAULT_FLOOR_QUANTILE", "snnl.scoring.neighbor_mass", "DEFAULT_FLOOR_QUANTILE"),
        ("DEFAULT_LAYER", "snnl.build.from_embeddings", "DEFAULT_LAYER"),
        ("TRANSFORMS", "snnl.evaluation.ood_sets", "TRANSFORMS"),
        ("GUARANTEES", "snnl.scoring.guarantees", "GUARANTEES"),
        ("DEFAULT_DELTA", "snnl.scoring.guarantees", "DEFAULT_DELTA"),
        ("DEFAULT_CALIBRATION_SIZE", "snnl.build.from_embeddings", "DEFAULT_CALIBRATION_SIZE"),
    ],
)
def test_option_values_mirror_the_library(name: str, module: str, attribute: str) -> None:
    assert getattr(common, name) == getattr(importlib.import_module(module), attribute)


def test_ood_groups_mirror_the_library() -> None:
    from snnl.cli.evaluate import OOD_GROUPS
    from snnl.evaluation.benchmark import GROUPS

    assert OOD_GROUPS == GROUPS


def test_reference_dtypes_mirror_the_library() -> None:
    from snnl.model.reference import _STORAGE

    assert set(common.REFERENCE_DTYPES) == set(_STORAGE)


def test_score_help_shows_its_examples_one_per_line(capsys: pytest.CaptureFixture[str]) -> None:
    """The examples are a block of their own after the options, not wrapped into the prose."""
    with pytest.raises(SystemExit):
        main(["score", "--help"])
    text = capsys.readouterr().out
    examples = text.split("\nexamples:\n", 1)[1].splitlines()
    assert "    snnl score --repository models --model digits-mlp FILE.npz [--out FILE.jsonl]" in (
        examples
    )
    assert text.split("\n\n")[1].startswith("FILE.npz holds x")  # the prose after the usage
