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


def test_data_defaults_read_what_the_demo_writes_and_outputs_stay_out_of_its_folders():
    """A stage run after `make demo` needs no data parameter; a synth or crop with default `out` and
    other parameters would be refused by, or replace, the demo's data, so those default elsewhere."""
    from multiloss.data import layout

    demo = yaml.safe_load((REPO / "experiments" / "demo.yaml").read_text())
    synthetic, cropped = demo["synth"]["out"], demo["crop"]["out"]

    def default(entry: str, name: str) -> str:
        return PROJECT["entry_points"][entry]["parameters"][name]["default"]

    assert default("segment", "data") == f"{synthetic}/{layout.LUNGS}"
    assert default("segment_eval", "data") == f"{synthetic}/{layout.HOLDOUT}"
    assert default("crop", "data") == f"{synthetic}/{layout.KERMANY}"
    for entry in ("classify", "sweep", "ensemble"):
        assert default(entry, "data") == cropped, entry
    assert default("gradcam", "images") == cropped
    demo_folder = Path(synthetic).parent
    for entry in ("synth", "crop"):
        out = Path(default(entry, "out"))
        assert demo_folder != out and demo_folder not in out.parents, entry
