"""Figures logged by the stages; matplotlib's Agg canvas only (no display, no pyplot state)."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from matplotlib.figure import Figure


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    os.replace(tmp, path)
    return path


def _contours(rgb: np.ndarray, mask: np.ndarray, color) -> None:
    found, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(rgb, found, -1, color, max(1, rgb.shape[0] // 200))


def mask_overlays(images: np.ndarray, truth: np.ndarray, predicted: np.ndarray, path, titles=None) -> Path:
    """Images (N, H, W) in [0, 1] with the true (green) and predicted (red) lung outlines."""
    n = len(images)
    fig = Figure(figsize=(2.6 * n, 2.9))
    for i in range(n):
        rgb = cv2.cvtColor(np.rint(images[i] * 255).astype(np.uint8), cv2.COLOR_GRAY2RGB)
        _contours(rgb, truth[i], (40, 220, 40))
        _contours(rgb, predicted[i], (240, 40, 40))
        ax = fig.add_subplot(1, n, i + 1)
        ax.imshow(rgb)
        ax.set_axis_off()
        ax.set_title(titles[i] if titles else f"green: truth, red: model", fontsize=8)
    return _save(fig, path)


def polar_scores(table: pd.DataFrame, scores: list[str], path, title: str) -> Path:
    """One closed polygon per row (model) over the score axes, like the paper's Figs 3, 4 and 6."""
    angles = np.linspace(0, 2 * np.pi, len(scores), endpoint=False)
    fig = Figure(figsize=(6.5, 6.5))
    ax = fig.add_subplot(projection="polar")
    low = float(np.floor(table[scores].to_numpy().min() * 20) / 20)
    for name, row in table.iterrows():
        values = row[scores].to_numpy(float)
        ax.plot(np.append(angles, angles[0]), np.append(values, values[0]), marker="o", label=str(name))
    ax.set_xticks(angles)
    ax.set_xticklabels(scores)
    ax.set_ylim(max(0.0, low - 0.05), 1.0)
    ax.set_title(title)
    ax.legend(loc="upper right", bbox_to_anchor=(1.35, 1.1), fontsize=8)
    return _save(fig, path)
