"""Parameter parsing shared by the stage modules.

MLflow Projects know only string/float/path/uri parameters, so an integer arrives as "200" or
"200.0"; these types accept both and name the parameter when the value is wrong.
"""

from __future__ import annotations

import argparse


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
