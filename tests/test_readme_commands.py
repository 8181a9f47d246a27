"""README.md's shell commands run as printed after `make demo`.

The commands are read from the README's fenced ``bash`` blocks, so the command run here is the one
a reader copies. The few not run, and the few settings added to keep a command short, are listed
below with their reasons; an entry that no longer matches a README command fails the test, so
neither list can outlive the text it speaks of. `make demo` itself is replaced by a tiny `main`
that writes the demo's folders (experiments/demo.yaml's ``synth.out`` and ``crop.out``).

The commands run one after the other in one shell session (variables a command exports reach the
next), in a home that is also the folder `mlflow run .` runs in, as the checkout is for a reader.
"""

from __future__ import annotations

import dataclasses
import os
import re
import resource
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from multiloss import paths

README = paths.CHECKOUT / "README.md"
FENCE = re.compile(r"^```(\S*)\s*$")

# Commands not run: (README section, the command's start; empty: every command of the section) -> why.
SKIPPED = {
    ("Set-up: two commands", "make demo"):
        "replaced by the tiny main this test runs first (the demo pipeline itself: tests/pipeline)",
    ("Set-up: two commands", "make test"): "the test suite itself",
    ("Running a stage", "mlflow run . -e synth --env-manager uv"):
        "builds a fresh environment, downloading TensorFlow (tests/test_python_env.py checks what it installs)",
    ("Running a stage", "mlflow models serve -m models:/cxr-ensemble@champion --env-manager uv"):
        "builds the model's environment, downloading TensorFlow, then serves until stopped",
    ("Sweeps", "mlflow run . -e sweep --env-manager local --experiment-name sweeps -P loss=focal -P sampler=tpe"):
        "its 10 printed trials cost minutes, past this test's budget; the grid sweep before it runs the same "
        "entry point and tests/classification/test_sweeps.py the TPE sampler",
    ("Sweeps", "export MLFLOW_TRACKING_URI=http://tracking-host:5000"):
        "the workers of several machines need a shared tracking server and PostgreSQL (tests/team)",
    ("Sweeps", "STORAGE=postgresql://"): "the same: a PostgreSQL on another host",
    ("Sweeps", "mlflow run . -e sweep --env-manager local --experiment-name sweeps -P loss=cal_neg_entropy "
               "-P storage=$STORAGE"): "the same: a PostgreSQL on another host",
    # Past the budget of a few minutes for this test (the commands above come first for a new user):
    ("Ensembles and promotion", "printf 'path\\n%s\\n'"): "writes the request of the next command, not run",
    ("Ensembles and promotion", "mlflow models predict -m models:/cxr-ensemble@champion"):
        "loads the whole served pipeline (~20 s of CPU); tests/ensembles/test_stage.py runs this command on a "
        "CSV of folders and checks its answer",
    ("Report: our numbers beside the paper's", "mlflow run . -e report"):
        "the tiny main's last step runs this entry point; tests/report check what it writes",
    ("The tracking store and the UI", "make ui"):
        "a server that runs until stopped; the command it runs: tests/tracking/test_urls.py",
    ("Serving and team tracking server", ""):
        "each command serves until stopped or needs a running model or tracking server "
        "(tests/ensembles/test_serving*.py, tests/team)",
}

# Parameters appended to a command (never one it prints: `mlflow run` refuses a repeated -P), to make
# it take seconds on the tiny demo's data: 1-epoch models on 13 phantoms per class are degenerate
# (one class predicted on 3 validation images), and it trained two classifier losses, not five.
TINY = {
    ("Running a stage", "mlflow run . -e synth --env-manager local"): ["-P", "n_seg=8", "-P", "n_cls=13"],
    ("Classification stage", "mlflow run . -e classify --env-manager local"):
        ["-P", "epochs=1", "-P", "batch_size=4", "-P", "patience=1"],
    ("Sweeps", "mlflow run . -e sweep --env-manager local --experiment-name sweeps -P loss=cal_neg_entropy "
               "-P data=data/demo/cropped"): ["-P", "n_trials=1", "-P", "batch_size=4", "-P", "patience=1"],
    ("Ensembles and promotion", "mlflow run . -e ensemble --env-manager local"):
        ["-P", "top_k=2", "-P", "epochs=1", "-P", "batch_size=4", "-P", "patience=1",
         "-P", "include_degenerate=true"],
    ("Ensembles and promotion", "mlflow run . -e promote --env-manager local -P model=cxr-classifier"):
        ["-P", "include_degenerate=true"],
}

# What a command's output must say: that it did what the README says, not only that it exited 0.
EXPECTED = {
    ("Running a stage", "python -m multiloss.tracking init"): "experiment 'promotions'",
    ("Running a stage", "mlflow run . -e synth --env-manager local"): "synth: wrote",
    ("Classification stage", "mlflow run . -e classify --env-manager local"):
        "classify: registered cxr-classifier version",
    ("Sweeps", "mlflow run . -e sweep --env-manager local --experiment-name sweeps -P loss=cal_neg_entropy "
               "-P data=data/demo/cropped"): "sweep: registered cxr-classifier version",
    ("Ensembles and promotion", "mlflow run . -e ensemble --env-manager local"):
        "ensemble: cxr-ensemble@champion -> version 2 ",
    ("Ensembles and promotion", "mlflow run . -e promote --env-manager local -P model=cxr-classifier"):
        "promote: cxr-classifier@calibrated -> version",
    ("Ensembles and promotion", "mlflow run . -e promote --env-manager local -P model=cxr-ensemble"):
        "promote: cxr-ensemble@champion -> version 1 ",
    ("Grad-CAM", "mlflow run . -e gradcam --env-manager local"): "gradcam: 6 maps of models:/cxr-classifier@champion",
}

# A command still running after this long is a server or a hang (the slowest here takes about a minute).
COMMAND_TIMEOUT = 300

# What `mlflow run .` reads from the checkout; the rest of the folder is the home (data/, mlruns/).
PROJECT_FILES = ("MLproject", "conda.yaml", "python_env.yaml", "requirements.txt", "pyproject.toml", "src",
                 "experiments")


@dataclasses.dataclass(frozen=True)
class Command:
    section: str
    line: int          # of README.md, where the command starts
    text: str          # as printed, continuation lines included

    @property
    def flat(self) -> str:
        """On one line, runs of blanks as one space: what the tables above match the start of."""
        return " ".join(self.text.replace("\\\n", " ").split())

    def matches(self, key: tuple[str, str]) -> bool:
        return self.section == key[0] and self.flat.startswith(key[1])


def readme_commands(text: str) -> list[Command]:
    """Every command of the fenced ``bash`` blocks, a line continued with ``\\`` joined to the next;
    blank and comment lines are not commands."""
    commands, section, language, pending, start = [], "", None, [], 0
    for number, line in enumerate(text.splitlines(), 1):
        fence = FENCE.match(line)
        if fence:
            assert not pending, f"README.md:{start}: a bash block ends inside a continued command"
            language = None if language is not None else fence.group(1)
            continue
        if language is None:
            if line.startswith("## "):
                section = line[3:].strip()
            continue
        if language != "bash" or (not pending and (not line.strip() or line.lstrip().startswith("#"))):
            continue
        start = start if pending else number
        pending.append(line)
        if not line.endswith("\\"):
            commands.append(Command(section, start, "\n".join(pending)))
            pending = []
    return commands


def fence_languages(text: str) -> set[str]:
    languages, inside = set(), False
    for line in text.splitlines():
        if FENCE.match(line):
            if not inside:
                languages.add(FENCE.match(line).group(1))
            inside = not inside
    return languages


def with_tiny_settings(command: Command, extra: list[str]) -> str:
    """The command with ``extra`` appended (before its comment): a plain ``mlflow run`` only, whose
    words survive the round trip through shlex unchanged."""
    code = shlex.split(command.flat, comments=True)
    assert code[:2] == ["mlflow", "run"] and not re.search(r"[$`|;&<>]", " ".join(code)), command.text
    return shlex.join(code + extra)


def one_match(commands: list[Command], key: tuple[str, str]) -> Command:
    found = [c for c in commands if c.matches(key)]
    assert len(found) == 1, f"{key}: matches {len(found)} README commands, not one"
    return found[0]


def test_the_tables_name_readme_commands_and_only_bash_blocks_hold_commands():
    """Cheap, and not slow: a renamed section or an edited command shows here before the long run."""
    text = README.read_text(encoding="utf-8")
    commands = readme_commands(text)
    assert len(commands) > 20
    for key in SKIPPED:
        assert any(c.matches(key) for c in commands), f"SKIPPED {key} matches no README command"
    for key in (*TINY, *EXPECTED):
        command = one_match(commands, key)
        assert not any(command.matches(skipped) for skipped in SKIPPED), f"{key} is skipped too"
    for key, extra in TINY.items():
        with_tiny_settings(one_match(commands, key), extra)
    # A shell block under another name (sh, console, ...) would escape this test.
    assert fence_languages(text) <= {"bash", "python", "json", ""}


def test_readme_commands_parse_as_a_reader_sees_them():
    text = "## A\n```bash\nsource x   # y\n# only a comment\n\nmlflow run . \\\n  -P a=1   # z\n```\n" \
           "```python\nimport os\n```\n## B\n```bash\nmake ui\n```\n"
    commands = readme_commands(text)
    assert [(c.section, c.line, c.flat) for c in commands] == [
        ("A", 3, "source x # y"), ("A", 6, "mlflow run . -P a=1 # z"), ("B", 14, "make ui")]
    assert with_tiny_settings(commands[1], ["-P", "b=2"]) == "mlflow run . -P a=1 -P b=2"


def tiny_demo_profile() -> dict:
    """The demo's folders and data, the tiniest settings a whole pipeline runs with."""
    demo = yaml.safe_load((paths.CONFIG_DIR / "demo.yaml").read_text())
    return {"data": demo["data"], "workers": 1,
            "synth": {**demo["synth"], "n_seg": 8, "n_cls": 13, "size": 64},
            "segment": {"losses": ["bce"], "img_size": 32, "epochs": 1, "batch_size": 4, "patience": 1},
            "segment_eval": {"top_k": 1},
            "crop": demo["crop"],
            # at the demo's classifier size, which the README's commands name
            "classify": {"losses": ["cce", "focal"], "img_size": demo["classify"]["img_size"], "epochs": 1,
                         "batch_size": 4, "patience": 1},
            "ensemble": {"top_k": "2", "epochs": 1, "batch_size": 4, "patience": 1, "include_degenerate": "true"},
            "gradcam": {"per_class": 1}}


def children_cpu() -> float:
    """CPU seconds of this process's finished children: a command's cost, whatever else the machine runs."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_in_session(script: str, cwd: Path, env: dict[str, str], env_file: Path) -> tuple[int | None, str]:
    """``script`` in bash with ``env``: its exit status (None: still running after COMMAND_TIMEOUT s,
    then killed with all it started) and output. What it exports (``set -a``: every assignment) is
    written to ``env_file`` for the next command, as one terminal session carries it."""
    wrapped = f"set -ea\n{script}\nenv -0 > {shlex.quote(str(env_file))}\n"
    shell = subprocess.Popen(["bash", "-c", wrapped], cwd=cwd, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output = shell.communicate(timeout=COMMAND_TIMEOUT)[0]
        return shell.returncode, output
    except subprocess.TimeoutExpired:
        os.killpg(shell.pid, signal.SIGKILL)
        try:
            return None, shell.communicate(timeout=10)[0]
        except subprocess.TimeoutExpired:                    # something of another session holds the pipe
            return None, ""


@pytest.mark.slow
def test_every_readme_command_runs_as_printed_after_a_tiny_demo(tmp_path, record_property):
    home = tmp_path / "home"
    home.mkdir()
    for name in PROJECT_FILES:
        (home / name).symlink_to(paths.CHECKOUT / name)
    (home / ".venv").symlink_to(Path(sys.prefix))            # the environment running these tests
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(MULTILOSS_HOME=str(home), TF_CPP_MIN_LOG_LEVEL="3")
    profile = tmp_path / "tiny-demo.yaml"
    profile.write_text(yaml.safe_dump(tiny_demo_profile()))

    durations = []                                           # (what, wall seconds, CPU seconds)
    started, cpu_before = time.monotonic(), children_cpu()
    uri = subprocess.run([sys.executable, "-m", "multiloss.tracking", "uri"], env=env, cwd=home,
                         capture_output=True, text=True, check=True).stdout.strip()
    demo = subprocess.run([sys.executable, "-m", "multiloss.stages.main", "--profile", str(profile)],
                          env={**env, "MLFLOW_TRACKING_URI": uri}, cwd=home, capture_output=True, text=True,
                          timeout=600)
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    durations.append(("tiny main", time.monotonic() - started, children_cpu() - cpu_before))
    assert (home / "data" / "demo" / "synthetic" / "synth.json").is_file()
    assert (home / "data" / "demo" / "cropped" / "crop.json").is_file()

    env_file = tmp_path / "session.env"
    commands = readme_commands(README.read_text(encoding="utf-8"))
    for command in commands:
        if any(command.matches(key) for key in SKIPPED):
            continue
        tiny = [extra for key, extra in TINY.items() if command.matches(key)]
        script = with_tiny_settings(command, tiny[0]) if tiny else command.text
        begun, cpu = time.monotonic(), children_cpu()
        status, output = run_in_session(script, home, env, env_file)
        assert status is not None, (f"README.md:{command.line} still ran after {COMMAND_TIMEOUT} s (a server? "
                                    f"then list it in SKIPPED):\n{script}\n{output[-3000:]}")
        assert status == 0, f"README.md:{command.line} failed:\n{script}\n{output[-4000:]}"
        durations.append((f"README.md:{command.line} {command.flat[:70]}", time.monotonic() - begun,
                          children_cpu() - cpu))
        for key, said in EXPECTED.items():
            if command.matches(key):
                assert said in output, f"README.md:{command.line}: no {said!r} in its output:\n{output[-3000:]}"
        env = dict(entry.split("=", 1) for entry in env_file.read_text().split("\0") if "=" in entry)
    assert env["MLFLOW_TRACKING_URI"] == uri                  # the README's export, carried along
    shown = "\n".join(f"{wall:7.1f} s {cpu:7.1f} s CPU  {what}" for what, wall, cpu in durations)
    record_property("durations", shown)
    print(f"\n{shown}\n{time.monotonic() - started:7.1f} s {children_cpu() - cpu_before:7.1f} s CPU  in all")
