"""MLproject and the stage parsers agree: every entry point's command, filled with its defaults,
is accepted by the stage module it runs."""

import importlib
import re
import shlex
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PROJECT = yaml.safe_load((REPO / "MLproject").read_text())


@pytest.mark.parametrize("entry", sorted(PROJECT["entry_points"]))
def test_default_command_parses(entry):
    spec = PROJECT["entry_points"][entry]
    defaults = {name: str(p.get("default", "x")) for name, p in spec["parameters"].items()}
    placeholders = set(re.findall(r"\{(\w+)\}", spec["command"]))
    assert placeholders == set(defaults), f"{entry}: parameters and command placeholders differ"
    command = spec["command"].format(**{k: shlex.quote(v) for k, v in defaults.items()})
    words = shlex.split(command)
    module = words[words.index("-m") + 1]
    assert module == f"multiloss.stages.{entry}"
    importlib.import_module(module).parse_args(words[words.index("-m") + 2:])


def test_every_float_parameter_has_a_numeric_default():
    for entry, spec in PROJECT["entry_points"].items():
        for name, p in spec["parameters"].items():
            if p["type"] == "float":
                float(p["default"])


def test_unet_sizes_must_be_multiples_of_32(capsys):
    from multiloss.stages import segment, segment_eval
    for module in (segment, segment_eval):
        args = ["--loss", "bce", "--data", "x"] if module is segment else ["--data", "x"]
        with pytest.raises(SystemExit):
            module.parse_args([*args, "--img-size", "48"])
        assert "img_size must be a multiple of 32" in capsys.readouterr().err
        assert module.parse_args([*args, "--img-size", "64.0"]).img_size == 64
