"""The ablation's report as document blocks (Markdown and HTML from the same list, as the paper
comparison), and the metrics a runs table can compare across ablation runs."""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pandas as pd

from multiloss import variants
from multiloss.ablation.plan import BASE
from multiloss.report.comparison import DASH, Bullets, Heading, Table, Text

TITLE = "What the corrections change"


def _pm(mean: float, std: float, digits: int = 3) -> str:
    if mean is None or math.isnan(mean):
        return DASH
    return f"{mean:.{digits}f}" if std is None or math.isnan(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def _n(value, digits: int = 3) -> str:
    return DASH if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _p(value) -> str:
    if value is None or math.isnan(value):
        return DASH
    return "< 0.001" if value < 0.001 else f"{value:.3f}"


def _frame(rows: list[dict], index: str) -> pd.DataFrame:
    return pd.DataFrame(rows).set_index(index) if rows else pd.DataFrame({index: []}).set_index(index)


SCORE_LABELS = {"mcc": "Test MCC", "ece": "ECE", "nll": "NLL", "brier": "Brier"}


def _score_cells(row: pd.Series, scores: tuple[str, ...]) -> dict[str, str]:
    """``score``'s mean ± std cell for each of ``scores``, then the degenerate seeds."""
    cells = {SCORE_LABELS[s]: _pm(row[f"{s}_mean"], row[f"{s}_std"]) for s in scores}
    cells["Degenerate"] = f"{int(row['degenerate'])}/{int(row['seeds'])}" if row["degenerate"] else ""
    return cells


def roles_block(roles: pd.DataFrame) -> list:
    rows = []
    for (loss, role), r in roles.iterrows():
        rows.append({"Loss": loss, "Row": role, "Trained as": f"{r['trained_as']} ({r['variant']})",
                     "Seeds": int(r["seeds"]), **_score_cells(r, ("mcc", "ece", "nll", "brier"))})
    return [Heading("1. Each flawed loss: published, corrected and the base it should collapse to"),
            Text("Test scores, mean ± std over seeds (same split and encoder for every row). A base row is the "
                 "loss the published variant trains as once its flaw acts (no base for ls_focal, whose flaw changes "
                 "the targets, or cal_neg_entropy, whose entropy term still acts). Degenerate: seeds whose model "
                 "predicts one class, or stays at confidence 1/3, on validation."),
            Table(_frame(rows, "Loss"))]


def paired_block(paired: pd.DataFrame) -> list:
    rows = []
    for (loss, seed), r in paired.iterrows():
        rows.append({"Loss": loss, "Seed": int(seed),
                     "Δ MCC [95 %]": f"{r['mcc_difference']:+.3f} [{r['mcc_low']:+.3f}, {r['mcc_high']:+.3f}]",
                     "p": _p(r["mcc_p"]), "p (Holm)": _p(r["mcc_p_holm"]),
                     "Δ NLL [95 %]": f"{r['nll_difference']:+.3f} [{r['nll_low']:+.3f}, {r['nll_high']:+.3f}]",
                     "p NLL": _p(r["nll_p"]), "p NLL (Holm)": _p(r["nll_p_holm"])})
    return [Heading("2. Published minus corrected, paired on the same test images"),
            Text("Per seed: the difference of the two models' scores on the same test images, its percentile "
                 "bootstrap interval and two-sided p-value (images resampled, both models together); Holm-adjusted "
                 "over every row of this table, each score on its own."),
            Table(_frame(rows, "Loss"))]


def calibration_block(calibration: pd.DataFrame) -> list:
    if not len(calibration):
        return []
    rows = []
    for name, r in calibration.iterrows():
        rows.append({"Model": name, "Seeds": int(r["seeds"]), **_score_cells(r, ("ece", "brier", "nll", "mcc")),
                     "Temperature": r.get("temperature") if isinstance(r.get("temperature"), str) else "",
                     "Beats temperature scaling on": r.get("beats_temperature_scaling_on", "")})
    return [Heading("3. Calibrated losses against temperature scaling"),
            Text("CCE with one temperature fitted on its validation predictions (by NLL) is the post-hoc baseline a "
                 "calibrated loss has to beat. 'Beats' means a better mean by more than the two standard deviations "
                 "together, a deliberately strict reading with few seeds. A collapsed (degenerate) model predicts 1/3 "
                 "for every class and so looks calibrated: read ECE beside MCC and the degenerate column."),
            Table(_frame(rows, "Model").fillna(""))]


def ensemble_block(gains: pd.DataFrame) -> list:
    if not len(gains):
        return []
    rows = []
    for label, r in gains.iterrows():
        rows.append({"Ensembles": label, "Best single": f"{r['best_single']} ({_n(r['best_single_mcc'])})",
                     "Proposed": f"{r.get('proposed', DASH)} ({_n(r.get('proposed_mcc'))})",
                     "Gain in MCC": f"{r['gain']:+.3f}" if not math.isnan(r.get("gain", math.nan)) else DASH,
                     "McNemar p": _p(r.get("mcnemar_p", math.nan)), "Bootstrap p": _p(r.get("bootstrap_p", math.nan)),
                     "Share of the published gain": _n(r.get("gain_surviving", math.nan), 2),
                     "Best on test (reference only)": f"{r['best_on_test']} ({_n(r['best_on_test_mcc'])})"})
    return [Heading("4. The paper's proposed method under each variant"),
            Text("Proposed: the weighted mean of the model-level ensembles (one per top-K size), against the best-ranked "
                 "single member of the same ensemble run, test MCC. Published members and selection come from the "
                 "published variant, which chooses them on the test split, so its numbers are optimistic by "
                 "construction."),
            Table(_frame(rows, "Ensembles"))]


def sweep_block(sweeps: list[dict], pruner: str) -> list:
    if not sweeps:
        return []
    rows = [{"Loss": s["loss"], "Paper's choice": s["paper"], "Its val NLL": _n(s["paper_val_nll"]),
             "Its test MCC": _n(s["paper_test_mcc"]), "Best of the grid": s.get("best", DASH),
             "Best val NLL": _n(s.get("best_val_nll")), "Best test MCC": _n(s.get("best_test_mcc")),
             "Trials (complete / pruned)": f"{s['trials']} ({s['complete']} / {s['pruned']})"} for s in sweeps]
    return [Heading("5. The corrected losses over the paper's grids"),
            Text(f"Each grid point is a corrected training valued by validation NLL (pruner: {pruner}); a pruned "
                 "point has no test score."),
            Table(_frame(rows, "Loss"))]


def build(header: list[str], roles: pd.DataFrame, paired: pd.DataFrame, calibration: pd.DataFrame,
          gains: pd.DataFrame, sweeps: list[dict], level: int = 1, pruner: str = "median") -> list:
    """The report's blocks; ``level`` is its title's heading level (its sections one below)."""
    flaws = tuple(f"{f.name} ({f.scope}): {f.what}" for f in variants.FLAWS)
    blocks = [Heading(TITLE, 1), Bullets(tuple(header)),
              Text("The published variant reproduces exactly each flaw of the authors' code that changes training "
                   "or selection:"), Bullets(flaws),
              Text(f"Not switchable, always corrected: {variants.NOT_SWITCHABLE}."),
              *roles_block(roles), *paired_block(paired), *calibration_block(calibration), *ensemble_block(gains),
              *sweep_block(sweeps, pruner)]
    return [Heading(b.text, b.level + level - 1) if isinstance(b, Heading) else b for b in blocks]


def metrics(roles: pd.DataFrame, gains: pd.DataFrame, sweeps: list[dict]) -> dict[str, float]:
    """Stable metric names: ``<loss>.<role>.test_<score>_mean``, ``ensembles.<variant>.gain``,
    ``sweep.<loss>.best_val_nll``."""
    found = {}
    for (loss, role), r in roles.iterrows():
        if role == BASE:
            loss = r["trained_as"]
        for score in ("mcc", "ece", "nll"):
            found[f"{loss}.{role}.test_{score}_mean"] = float(r[f"{score}_mean"])
    for label, r in gains.iterrows():
        if label in (variants.PUBLISHED, variants.CORRECTED) and not math.isnan(r.get("gain", math.nan)):
            found[f"ensembles.{label}.gain"] = float(r["gain"])
    for s in sweeps:
        if "best_val_nll" in s:
            found[f"sweep.{s['loss']}.best_val_nll"] = s["best_val_nll"]
    return {k: v for k, v in found.items() if not math.isnan(v)}


# Each table as the ablation run logs it: file name and index columns.
TABLE_FILES = {"roles": ("ablation_roles.csv", ["loss", "role"]), "paired": ("ablation_paired.csv", ["loss", "seed"]),
               "calibration": ("ablation_calibration.csv", ["model_row"]),
               "gains": ("ablation_ensembles.csv", ["ensembles"])}
SUMMARY_FILE = "ablation_summary.json"      # the header lines and the sweeps' summaries


@dataclass
class AblationTables:
    """Everything the report shows, as logged on the ablation run (so the ``report`` stage can
    show the same section again)."""

    header: list[str]
    roles: pd.DataFrame
    paired: pd.DataFrame
    calibration: pd.DataFrame
    gains: pd.DataFrame
    sweeps: list[dict]

    pruner: str = "median"

    def blocks(self, level: int = 1) -> list:
        return build(self.header, self.roles, self.paired, self.calibration, self.gains, self.sweeps, level,
                     self.pruner)

    def save(self, folder: str | Path) -> None:
        for name, (file, index) in TABLE_FILES.items():
            frame = getattr(self, name)
            if len(frame):
                frame.rename_axis(index).to_csv(Path(folder) / file)
            else:
                (Path(folder) / file).write_text("")
        (Path(folder) / SUMMARY_FILE).write_text(json.dumps({"header": self.header, "sweeps": self.sweeps,
                                                             "pruner": self.pruner}, indent=2))

    @classmethod
    def load(cls, run_id: str) -> AblationTables:
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(mlflow.artifacts.download_artifacts(run_id=run_id, dst_path=tmp))
            frames = {}
            for name, (file, index) in TABLE_FILES.items():
                text = (local / file).read_text()
                frames[name] = pd.read_csv(local / file, index_col=index) if text.strip() else pd.DataFrame()
            summary = json.loads((local / SUMMARY_FILE).read_text())
        return cls(summary["header"], frames["roles"], frames["paired"], frames["calibration"], frames["gains"],
                   summary["sweeps"], summary.get("pruner", "median"))
