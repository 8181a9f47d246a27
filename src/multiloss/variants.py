"""The published code's flaws that change training or selection, each a switch that reproduces it
exactly, for a side-by-side comparison with the corrected suite.

A variant is ``corrected`` (no flaw: the default), ``published`` (every flaw) or flaw names joined
by ``,`` or ``+``. A loss flaw acts on the losses it names only; an ensemble flaw on the ensemble
stage only. A stage refuses a flaw it has nothing to do with, so a typed variant never silently
trains the corrected model.
"""

from __future__ import annotations

from dataclasses import dataclass

from multiloss import names

CORRECTED = "corrected"
PUBLISHED = "published"
LOSS, ENSEMBLE = "loss", "ensemble"
CALIBRATED = ("cal_cce", "cal_neg_entropy", "cal_kld", "cal_focal", "cal_hinge")


@dataclass(frozen=True)
class Flaw:
    name: str
    scope: str                       # LOSS: a classifier training; ENSEMBLE: the ensemble stage
    losses: tuple[str, ...]          # the losses a LOSS flaw acts on
    what: str                        # what the published code does, for messages and reports


FLAWS = (
    Flaw("calibration_no_gradient", LOSS, CALIBRATED,
         "the calibration term is a constant (computed outside the graph): it moves the loss value, not the weights"),
    Flaw("entropy_unattached", LOSS, ("cce_entropy",),
         "the entropy regulariser is never attached: cce_entropy trains as CCE"),
    Flaw("smoothing_half", LOSS, ("ls_focal",),
         "label smoothing divides sigma by 2 instead of the class count"),
    Flaw("head_dense_only", ENSEMBLE, (),
         "the model-level ensemble freezes its new 1x1 convolution and trains only its last Dense layer"),
    Flaw("stacking_on_train", ENSEMBLE, (),
         "the stacking learner is fitted on the members' predictions on their own training images"),
    Flaw("test_selection", ENSEMBLE, (),
         "members, SLSQP weights and their restarts are chosen on the test split"),
)
BY_NAME = {flaw.name: flaw for flaw in FLAWS}
# Flaws of the published code kept corrected in every variant (they are not a training or selection
# choice a reader compares, or are fixed elsewhere for good).
NOT_SWITCHABLE = ("the validation split by file name (ours is by patient), majority-vote ties to the highest "
                  "class index (ours: to the higher mean probability), the Grad-CAM threshold after conversion to "
                  "0-255")
# The loss each loss trains as once its flaws act (the published calibration term has no gradient,
# the unattached regulariser none at all): the ablation's base rows.
BASE_LOSS = {"cal_cce": "cce", "cal_kld": "kld", "cal_focal": "focal", "cal_hinge": "hinge", "cce_entropy": "cce"}


@dataclass(frozen=True)
class Variant:
    """The flaws switched on, in :data:`FLAWS` order, and the name the user gave them."""

    flaws: tuple[str, ...]
    name: str

    def has(self, flaw: str) -> bool:
        if flaw not in BY_NAME:
            raise KeyError(f"unknown flaw {flaw!r}")
        return flaw in self.flaws

    def scoped(self, scope: str) -> tuple[str, ...]:
        return tuple(f for f in self.flaws if BY_NAME[f].scope == scope)

    def acting_on(self, loss: str) -> tuple[str, ...]:
        """The loss flaws that change the training of ``loss``."""
        return tuple(f for f in self.scoped(LOSS) if loss in BY_NAME[f].losses)

    def for_loss(self, loss: str) -> Variant:
        """The variant a classifier of ``loss`` trains with inside a pipeline of this variant: the
        flaws acting on ``loss``, named ``published`` when the pipeline's is, ``corrected`` when
        none acts (its training is the corrected one)."""
        acting = self.acting_on(loss)
        if self.name == PUBLISHED and acting:
            return Variant(acting, PUBLISHED)
        return make(acting)          # no flaw acts: the corrected training, reusable as such

    @property
    def members(self) -> Variant:
        """The classifiers' part of an ensemble's variant (its loss flaws)."""
        return Variant(self.scoped(LOSS), self.name) if self.name in (PUBLISHED, CORRECTED) else make(self.scoped(LOSS))


def make(flaws) -> Variant:
    ordered = tuple(f.name for f in FLAWS if f.name in set(flaws))
    return Variant(ordered, "+".join(ordered) or CORRECTED)


def parse(text: str | Variant | None, parameter: str = "variant") -> Variant:
    """``corrected`` (also empty), ``published``, or flaw names; an unknown name is an error naming it."""
    if isinstance(text, Variant):
        return text
    text = (text or CORRECTED).strip()
    if text == CORRECTED:
        return Variant((), CORRECTED)
    if text == PUBLISHED:
        return Variant(tuple(f.name for f in FLAWS), PUBLISHED)
    given = [part.strip() for part in text.replace("+", ",").split(",") if part.strip()]
    unknown = [name for name in given if name not in BY_NAME]
    if unknown or not given:
        raise ValueError(f"parameter {parameter}: unknown flaw {', '.join(unknown) or repr(text)}; use {CORRECTED}, "
                         f"{PUBLISHED} or any of {', '.join(BY_NAME)}")
    return make(given)


def for_training(text: str | Variant | None, loss: str, parameter: str = "variant") -> Variant:
    """The variant of one classifier training of ``loss``, refusing flaws that cannot act on it
    (an ensemble flaw, or a loss flaw of other losses); ``published`` takes those that act."""
    variant = parse(text, parameter)
    if variant.name == PUBLISHED:
        return variant.for_loss(loss)
    for flaw in variant.flaws:
        spec = BY_NAME[flaw]
        if spec.scope != LOSS:
            raise ValueError(f"parameter {parameter}: {flaw} is a flaw of the ensemble stage, not of a classifier "
                             "training")
        if loss not in spec.losses:
            raise ValueError(f"parameter {parameter}: {flaw} does not apply to loss {loss!r} "
                             f"(it applies to {', '.join(spec.losses)})")
    return variant


def tags(variant: Variant) -> dict[str, str]:
    """The tags a run or version of ``variant`` carries: its name and its flaws."""
    return {names.VARIANT_TAG: variant.name, names.FLAWS_TAG: ",".join(variant.flaws) or "none"}


def tagged_flaws(version_tags: dict[str, str]) -> tuple[str, ...]:
    """The flaws a run's or version's tags record (none for one tagged before variants existed)."""
    return tuple(f for f in version_tags.get(names.FLAWS_TAG, "none").split(",") if f and f != "none")


def check_acts(variant: Variant, losses: list[str], parameter: str = "variant") -> None:
    """Refuse a named loss flaw that acts on none of ``losses`` (a pipeline's classifiers): it would
    silently train the corrected models. ``published`` takes what acts."""
    if variant.name == PUBLISHED:
        return
    idle = [f for f in variant.scoped(LOSS) if not set(BY_NAME[f].losses) & set(losses)]
    if idle:
        raise ValueError(f"parameter {parameter}: {', '.join(idle)} acts on none of the losses "
                         f"{', '.join(losses)} (it applies to {', '.join(l for f in idle for l in BY_NAME[f].losses)})")
