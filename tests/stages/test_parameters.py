"""One source for every stage default: MLproject declares each parameter once; each stage's parser
takes exactly those parameters with exactly those defaults, and the library's configs repeat none."""

import argparse
import dataclasses
import importlib
import re

import pytest
import yaml

from multiloss import paths
from multiloss.project import declared_parameters
from multiloss.stages.cli import StageParser

PROJECT = yaml.safe_load(paths.PROJECT_FILE.read_text())
ENTRY_POINTS = sorted(PROJECT["entry_points"])


def stage_parser(entry: str) -> StageParser:
    module = importlib.import_module(f"multiloss.stages.{entry}")
    parser = module.parser()
    assert isinstance(parser, StageParser) and parser.entry_point == entry
    return parser


def arguments(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {a.dest: a for a in parser._actions if not isinstance(a, argparse._HelpAction)}


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_the_parser_takes_exactly_the_declared_parameters_with_their_defaults(entry):
    declared = PROJECT["entry_points"][entry]["parameters"]
    actions = arguments(stage_parser(entry))
    assert set(actions) == set(declared), f"{entry}: parser and MLproject name different parameters"
    for name, action in actions.items():
        assert action.option_strings == ["--" + name.replace("_", "-")], f"{entry}.{name}"
        if action.required:
            continue
        assert action.default == str(declared[name]["default"]), f"{entry}.{name}: default not MLproject's"


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_the_command_passes_every_parameter_under_its_own_flag(entry):
    spec = PROJECT["entry_points"][entry]
    passed = dict(re.findall(r"--([\w-]+)[ =]\{(\w+)\}", spec["command"]))
    assert {flag.replace("-", "_"): name for flag, name in passed.items()} == {n: n for n in spec["parameters"]}


def test_float_parameters_have_numeric_defaults():
    bad = [f"{entry}.{name}={p.get('default')!r}" for entry, spec in PROJECT["entry_points"].items()
           for name, p in spec["parameters"].items()
           if p["type"] == "float" and not re.fullmatch(r"-?\d+(\.\d+)?(e-?\d+)?", str(p.get("default")))]
    assert bad == []


def test_the_classifier_config_repeats_no_stage_default():
    from multiloss.classification.train import ClassifierConfig

    declared = declared_parameters("classify")
    with_defaults = [f.name for f in dataclasses.fields(ClassifierConfig) if f.name in declared
                     and (f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING)]
    assert with_defaults == []


def test_stage_parser_reads_defaults_and_refuses_its_own(tmp_path):
    parser = StageParser("segment")
    parser.parameter("epochs", type=int)
    parser.parameter("loss", required=True)
    assert parser.parse_args(["--loss", "bce"]).epochs == int(declared_parameters("segment")["epochs"]["default"])
    with pytest.raises(SystemExit):
        parser.parse_args([])                       # required on a direct command line
    with pytest.raises(TypeError, match="lives in MLproject"):
        parser.parameter("lr", type=float, default=0.1)
    with pytest.raises(KeyError, match="declares no parameter 'learning_rate'"):
        parser.parameter("learning_rate")
    with pytest.raises(KeyError, match="declares no entry point 'segmnet'"):
        StageParser("segmnet")
