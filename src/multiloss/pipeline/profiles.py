"""Pipeline profiles: ``experiments/<name>.yaml`` holds every setting of a pipeline, in one place
each; the ``main`` stage's parameters override a few of them."""

from __future__ import annotations

import json
import os
from pathlib import Path

import yaml

from multiloss import paths, project
from multiloss.data import layout


def home_path(path: str | os.PathLike) -> Path:
    """A profile's path: relative ones live under the project root (``MULTILOSS_HOME`` if set),
    beside the tracking store, so that one home holds a pipeline's data and runs."""
    return (paths.project_root() / path).resolve()


def load_profile(name: str) -> dict:
    """``experiments/<name>.yaml``, or a YAML file given by path."""
    path = Path(name) if name.endswith((".yaml", ".yml")) else paths.CONFIG_DIR / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in paths.CONFIG_DIR.glob("*.yaml")))
        raise ValueError(f"profile {name!r}: no file {path} (profiles in {paths.CONFIG_DIR}: {known})")
    return yaml.safe_load(path.read_text())


def with_overrides(profile: dict, *, img_size: int = 0, epochs: int = 0, seg_losses: str = "",
                   cls_losses: str = "") -> dict:
    """The profile with main's overrides (0 or empty: the profile's own): ``img_size`` every image
    size of the chain (U-Net, crop, classifier), ``epochs`` the most epochs of each U-Net and each
    classifier."""
    profile = json.loads(json.dumps(profile))
    for stage, losses in (("segment", seg_losses), ("classify", cls_losses)):
        if img_size:
            profile[stage]["img_size"] = img_size
        if epochs:
            profile[stage]["epochs"] = epochs
        if losses.strip():
            profile[stage]["losses"] = [name.strip() for name in losses.split(",") if name.strip()]
        twice = sorted({name for name in profile[stage]["losses"] if profile[stage]["losses"].count(name) > 1})
        if twice:
            raise ValueError(f"the {stage} losses name {', '.join(twice)} more than once "
                             f"(main's {'seg' if stage == 'segment' else 'cls'}_losses or the profile)")
    return profile


def workers(profile: dict, given: int, name: str) -> int:
    """How many steps run at once: ``given`` (main's parameter), else the profile's, else 1."""
    count = given or profile.get("workers", 1)
    if not isinstance(count, int) or isinstance(count, bool):
        raise ValueError(f"profile {name}: workers must be a whole number of processes, got {count!r}")
    return count


def intra_op_threads(profile: dict, name: str) -> int:
    """The threads each op of the pipeline's processes may use (:mod:`multiloss.cpu_threads`):
    the profile's, else 0 (TensorFlow's default, one per CPU)."""
    from multiloss import cpu_threads

    return cpu_threads.check(profile.get(cpu_threads.PARAMETER, 0), f"profile {name}: {cpu_threads.PARAMETER}")


def stage_settings(profile: dict, stage: str) -> dict:
    """The parameters the profile gives one stage (its losses are the chain's to spread over steps);
    a YAML boolean as MLproject's string parameters spell it (``false``)."""
    return {k: str(v).lower() if isinstance(v, bool) else v
            for k, v in (profile.get(stage) or {}).items() if k != "losses"}


TRAINING_STAGES = ("segment", "classify", "sweep")


def check_training_options(profile: dict, name: str) -> None:
    """Refuse, before any run, a training ``precision`` the suite does not know or a
    ``jit_compile: true`` where TensorFlow sees no GPU; the error names the profile and the key."""
    from multiloss.models import precision

    for stage in TRAINING_STAGES:
        settings = stage_settings(profile, stage)
        if "precision" in settings:
            precision.check_precision(str(settings["precision"]), f"profile {name}: {stage}.precision")
        if "jit_compile" in settings:
            precision.check_jit_compile(bool(project.boolean_text(settings["jit_compile"])),
                                        f"profile {name}: {stage}.jit_compile")


def data_layout(profile: dict, synthetic: bool) -> dict[str, str]:
    """The folders of the data root (lungs, holdout, kermany): the generator's names, which a
    profile's ``layout`` may rename for a user's own copies (synthetic data always has them)."""
    renamed = {} if synthetic else (profile.get("layout") or {})
    unknown = sorted(set(renamed) - set(layout.DATA_ROOT))
    if unknown:
        raise ValueError(f"profile layout: unknown folder key(s) {', '.join(unknown)}; "
                         f"known: {', '.join(layout.DATA_ROOT)}")
    return {**layout.DATA_ROOT, **renamed}
