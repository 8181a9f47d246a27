"""Figures logged by the stages; matplotlib's Agg canvas only (no display, no pyplot state)."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from multiloss.files import replacing


def save_figure(fig: Figure, path: str | os.PathLike) -> Path:
    """Write ``fig`` as ``path`` (format from its suffix) and return the path.

    Every logged figure goes through here, so all share one resolution and tight bounds, and a
    reader never sees a half-written file (it is written beside ``path`` and moved into place). The
    figure stays open: one made through pyplot is the caller's to close.
    """
    with replacing(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
    return Path(path)


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
        ax.set_title(titles[i] if titles else "green: truth, red: model", fontsize=8)
    return save_figure(fig, path)


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
    return save_figure(fig, path)


def confusion_plot(matrix: np.ndarray, classes, path, title: str) -> Path:
    fig = Figure(figsize=(4.2, 3.8))
    ax = fig.add_subplot()
    ax.imshow(matrix, cmap="Blues")
    for (i, j), count in np.ndenumerate(matrix):
        ax.text(j, i, str(count), ha="center", va="center",
                color="white" if count > matrix.max() / 2 else "black")
    ax.set_xticks(range(len(classes)), classes)
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    return save_figure(fig, path)


def roc_pr_plot(labels: np.ndarray, probs: np.ndarray, classes, path, title: str) -> Path:
    """One-vs-rest ROC and precision-recall curves per class, plus the micro average."""
    from sklearn.metrics import (
        average_precision_score,
        precision_recall_curve,
        roc_auc_score,
        roc_curve,
    )

    onehot = np.eye(len(classes))[labels]
    fig = Figure(figsize=(10, 4.2))
    roc_ax, pr_ax = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    curves = [(name, onehot[:, k], probs[:, k]) for k, name in enumerate(classes)]
    curves.append(("micro", onehot.ravel(), probs.ravel()))
    for name, truth, score in curves:
        if truth.min() == truth.max():
            continue
        fpr, tpr, _ = roc_curve(truth, score)
        roc_ax.plot(fpr, tpr, label=f"{name} (AUC {roc_auc_score(truth, score):.3f})")
        precision, recall, _ = precision_recall_curve(truth, score)
        pr_ax.plot(recall, precision, label=f"{name} (AP {average_precision_score(truth, score):.3f})")
    roc_ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    roc_ax.set(xlabel="false positive rate", ylabel="true positive rate", title=f"ROC — {title}")
    pr_ax.set(xlabel="recall", ylabel="precision", title=f"PR — {title}")
    roc_ax.legend(fontsize=8)
    pr_ax.legend(fontsize=8)
    return save_figure(fig, path)


def reliability_plot(confidence: np.ndarray, accuracy: np.ndarray, counts: np.ndarray, path, title: str) -> Path:
    fig = Figure(figsize=(4.5, 4.2))
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], "k:", lw=0.8, label="perfect calibration")
    ax.scatter(confidence, accuracy, s=20 + 200 * counts / max(counts.sum(), 1), label="bins (size ∝ images)")
    ax.plot(confidence, accuracy, lw=1)
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (top probability)", ylabel="accuracy", title=title)
    ax.legend(fontsize=8, loc="upper left")
    return save_figure(fig, path)
