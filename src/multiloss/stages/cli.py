"""Parameter parsing shared by the stage modules.

MLproject declares every stage parameter and its default, once: :class:`StageParser` reads them from
there, so a stage's own command line cannot drift from what ``mlflow run`` passes.

MLflow Projects know only string/float/path/uri parameters, so an integer arrives as "200" or
"200.0"; these types accept both and name the parameter when the value is wrong.
"""

from __future__ import annotations

import argparse

from multiloss import paths
from multiloss.project import boolean_text, declared_parameters


def integer(name: str, minimum: int | None = None, maximum: int | None = None):
    def parse(text: str) -> int:
        try:
            number = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"parameter {name} must be an integer, got {text!r}") from None
        if not number.is_integer():
            raise argparse.ArgumentTypeError(f"parameter {name} must be an integer, got {text!r}")
        value = int(number)
        if minimum is not None and value < minimum:
            raise argparse.ArgumentTypeError(f"parameter {name} must be >= {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"parameter {name} must be <= {maximum}, got {value}")
        return value
    parse.__name__ = name
    return parse


def boolean(name: str):
    """true/false (also 1/0, yes/no; empty is false), as MLflow passes a string parameter."""
    def parse(text: str) -> bool:
        value = boolean_text(text)
        if value is None:
            raise argparse.ArgumentTypeError(f"parameter {name} must be true or false, got {text!r}")
        return value
    parse.__name__ = name
    return parse


def jit_compile(name: str = "jit_compile"):
    """A boolean XLA switch, true refused where TensorFlow sees no GPU (SPEC §2), before any run."""
    as_boolean = boolean(name)

    def parse(text: str) -> bool:
        from multiloss.models.precision import check_jit_compile

        try:
            return check_jit_compile(as_boolean(text), f"parameter {name}")
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
    parse.__name__ = name
    return parse


def variant(text: str):
    """A variant of the published code (:mod:`multiloss.variants`); the error names the parameter
    and the known flaws."""
    from multiloss import variants

    try:
        return variants.parse(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def version_list(name: str):
    """Comma-separated registered version numbers (empty: none given)."""
    def parse(text: str) -> tuple[str, ...]:
        chosen = tuple(v.strip() for v in text.split(",") if v.strip())
        bad = [v for v in chosen if not v.isdigit()]
        if bad:
            raise argparse.ArgumentTypeError(f"parameter {name} must be version numbers such as 3,7, got {', '.join(bad)}")
        return chosen
    parse.__name__ = name
    return parse


def unet_size(name: str):
    """An integer image size the U-Net can take (a multiple of 32)."""
    from multiloss.models.unet import check_size

    as_integer = integer(name, 32)

    def parse(text: str) -> int:
        try:
            return check_size(name, as_integer(text))
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
    parse.__name__ = name
    return parse


def optional_float(name: str):
    """A float, or empty / "none" for "use the loss's default from its table"."""
    def parse(text: str):
        if text.strip().lower() in ("", "none", "default"):
            return None
        try:
            return float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"parameter {name} must be a number or empty, got {text!r}") from None
    parse.__name__ = name
    return parse


class StageParser(argparse.ArgumentParser):
    """The parser of one entry point: ``parameter(name, type)`` adds ``--name`` with MLproject's
    default (parsed by ``type``, as ``mlflow run`` would pass it). ``required=True`` keeps a
    parameter mandatory on a direct command line although MLproject names a default for it."""

    def __init__(self, entry_point: str, description: str | None = None):
        super().__init__(prog=entry_point, description=description)
        self.entry_point = entry_point
        self.declared = declared_parameters(entry_point)

    def parameter(self, name: str, type=str, *, required: bool = False, **kwargs) -> argparse.Action:
        if name not in self.declared:
            raise KeyError(f"{paths.PROJECT_FILE}: entry point {self.entry_point!r} declares no parameter {name!r}")
        if "default" in kwargs:
            raise TypeError(f"{self.entry_point}.{name}: its default lives in MLproject, not in the parser")
        spec = self.declared[name]
        if required or "default" not in spec:
            kwargs["required"] = True
        else:
            kwargs["default"] = str(spec["default"])   # argparse parses a string default with ``type``
        return self.add_argument("--" + name.replace("_", "-"), dest=name, type=type, **kwargs)
