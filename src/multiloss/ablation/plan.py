"""What an ablation trains: for every loss a flaw of the published code acts on, its published and
corrected variants and the base loss the published one should collapse to, each under every seed;
then the ensembles of each variant and the corrected sweeps of the paper's grids."""

from __future__ import annotations

from dataclasses import dataclass

from multiloss import variants

# A row of the ablation's table: the loss as published, as corrected, and the loss it trains as.
PUBLISHED, CORRECTED, BASE = "published", "corrected", "base"
ROLES = (PUBLISHED, CORRECTED, BASE)


@dataclass(frozen=True)
class Training:
    """One classifier training of the ablation: ``loss`` trained with ``variant``; ``role`` says
    which column of which rows (``rows``: the touched losses it serves) it fills."""

    loss: str
    variant: str
    seed: int
    role: str
    rows: tuple[str, ...]

    @property
    def step(self) -> str:
        return f"classify.{self.loss}.{self.variant}.seed{self.seed}"


def touched(losses: list[str]) -> list[str]:
    """The losses among ``losses`` that a loss flaw acts on, in their order."""
    acting = {loss for flaw in variants.FLAWS if flaw.scope == variants.LOSS for loss in flaw.losses}
    return [loss for loss in losses if loss in acting]


def trainings(losses: list[str], seeds: list[int]) -> list[Training]:
    """Published and corrected for each touched loss, and each base loss once per seed (one base
    serves every loss that collapses to it: cce is the base of cal_cce and of cce_entropy)."""
    rows = touched(losses)
    if not rows:
        raise ValueError(f"no flaw of the published code acts on any of the losses {', '.join(losses)}; the ablation "
                         f"needs one of {', '.join(sorted({l for f in variants.FLAWS for l in f.losses}))}")
    bases: dict[str, list[str]] = {}
    for loss in rows:
        if loss in variants.BASE_LOSS:
            bases.setdefault(variants.BASE_LOSS[loss], []).append(loss)
    planned = []
    for seed in seeds:
        for loss in rows:
            planned += [Training(loss, variants.PUBLISHED, seed, PUBLISHED, (loss,)),
                        Training(loss, variants.CORRECTED, seed, CORRECTED, (loss,))]
        planned += [Training(base, variants.CORRECTED, seed, BASE, tuple(of)) for base, of in bases.items()]
    return planned


def ensemble_variants(corrections: str) -> dict[str, str]:
    """Label -> variant of the ensembles to build: published and corrected, and with ``each``
    also the published code with one flaw corrected at a time (how much of a gain survives it)."""
    chosen = {variants.PUBLISHED: variants.PUBLISHED, variants.CORRECTED: variants.CORRECTED}
    if corrections == "each":
        every = [flaw.name for flaw in variants.FLAWS]
        for flaw in every:
            chosen[f"published without {flaw}"] = variants.make([f for f in every if f != flaw]).name
    elif corrections != "both":
        raise ValueError(f"parameter corrections: use both (published and corrected) or each (also one flaw "
                         f"corrected at a time), got {corrections!r}")
    return chosen


def ensemble_step(label: str) -> str:
    """The pipeline step of the ensembles labelled ``label`` (a name MLflow takes as a tag key)."""
    return "ensemble." + label.replace(" ", "-")
