"""The search space of a sweep: the paper's grids of loss parameters, restricted to one loss.

The grids live in experiments/sweep_grids.yaml; a user's grid file replaces some of them.
"""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import yaml

from multiloss import paths
from multiloss.losses import CLASSIFICATION_LOSSES


def grid_parameters() -> list[str]:
    """Every parameter a grid file may name: those of the classification losses."""
    return sorted({name for params in CLASSIFICATION_LOSSES.values() for name in params})


def read_grid(path: str | Path) -> dict[str, list[float]]:
    """A grid file: parameter name → list of values."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"grid file {path} does not exist")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a grid file maps parameter names to lists of values")
    known = grid_parameters()
    grid = {}
    for name, values in data.items():
        if name not in known:
            raise ValueError(f"{path}: unknown parameter {name!r}; grid parameters are {', '.join(known)}")
        if not isinstance(values, list) or not values:
            raise ValueError(f"{path}: {name} must be a non-empty list of numbers, got {values!r}")
        try:
            numbers = [float(v) for v in values]
        except (TypeError, ValueError):
            raise ValueError(f"{path}: {name} must be a list of numbers, got {values!r}") from None
        if len(set(numbers)) != len(numbers):
            raise ValueError(f"{path}: {name} lists a value twice: {values!r}")
        grid[name] = numbers
    return grid


def load_grid(override: str | Path | None = None) -> dict[str, list[float]]:
    """The paper's grids (experiments/sweep_grids.yaml), with the parameters ``override`` lists replaced."""
    grid = read_grid(paths.SWEEP_GRIDS)
    if override:
        grid.update(read_grid(override))
    return grid


def search_space(loss: str, grid: dict[str, list[float]]) -> dict[str, list[float]]:
    """The grid restricted to the parameters ``loss`` has, in the loss table's order: a sweep
    searches only what the loss reads."""
    if loss not in CLASSIFICATION_LOSSES:
        raise ValueError(f"unknown classification loss {loss!r}; choose one of {', '.join(CLASSIFICATION_LOSSES)}")
    parameters = list(CLASSIFICATION_LOSSES[loss])
    if not parameters:
        swept = [name for name, params in CLASSIFICATION_LOSSES.items() if params]
        raise ValueError(f"loss {loss!r} has no parameters to sweep (train it with the classify stage); "
                         f"losses with parameters: {', '.join(swept)}")
    missing = [name for name in parameters if name not in grid]
    if missing:
        raise ValueError(f"the grid has no values for {', '.join(missing)}, which loss {loss!r} needs")
    return {name: list(grid[name]) for name in parameters}


def grid_points(space: dict[str, list[float]], seed: int) -> list[dict[str, float]]:
    """Every combination, in a seeded shuffled order (a partial budget then spreads over the grid)."""
    points = [dict(zip(space, values)) for values in itertools.product(*space.values())]
    random.Random(seed).shuffle(points)
    return points
