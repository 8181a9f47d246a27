"""What an ablation trains and which ensembles it builds."""

import pytest

from multiloss import variants
from multiloss.ablation.plan import (
    BASE,
    CORRECTED,
    PUBLISHED,
    ensemble_step,
    ensemble_variants,
    touched,
    trainings,
)

DEMO_LOSSES = ["cce", "focal", "kld", "hinge", "ls_cce", "ls_focal", "cal_cce", "cce_entropy", "cal_neg_entropy",
               "cal_kld", "cal_focal", "cal_hinge"]


def test_the_touched_losses_are_those_a_flaw_acts_on():
    assert touched(DEMO_LOSSES) == ["ls_focal", "cal_cce", "cce_entropy", "cal_neg_entropy", "cal_kld", "cal_focal",
                                    "cal_hinge"]


def test_each_touched_loss_is_trained_published_and_corrected_and_each_base_once_per_seed():
    planned = trainings(DEMO_LOSSES, [0, 1, 2])
    assert len(planned) == 3 * (7 * 2 + 4)
    assert len({t.step for t in planned}) == len(planned)             # distinct step names
    seed0 = [t for t in planned if t.seed == 0]
    bases = {t.loss: t.rows for t in seed0 if t.role == BASE}
    assert bases == {"cce": ("cal_cce", "cce_entropy"), "kld": ("cal_kld",), "focal": ("cal_focal",),
                     "hinge": ("cal_hinge",)}
    assert all(t.variant == variants.CORRECTED for t in seed0 if t.role != PUBLISHED)
    published = [t for t in seed0 if t.role == PUBLISHED]
    assert [t.loss for t in published] == touched(DEMO_LOSSES)
    assert all(variants.for_training(t.variant, t.loss).flaws for t in published)   # a flaw acts on every one
    assert {t.role for t in seed0 if t.loss == "cal_cce"} == {PUBLISHED, CORRECTED}


def test_an_ablation_of_losses_no_flaw_touches_is_refused():
    with pytest.raises(ValueError, match="no flaw of the published code acts on any of the losses cce, ls_cce"):
        trainings(["cce", "ls_cce"], [0])


def test_ensembles_of_each_correction():
    assert ensemble_variants("both") == {"published": "published", "corrected": "corrected"}
    each = ensemble_variants("each")
    assert len(each) == 2 + len(variants.FLAWS)
    one_off = variants.parse(each["published without test_selection"])
    assert not one_off.has("test_selection") and len(one_off.flaws) == len(variants.FLAWS) - 1
    with pytest.raises(ValueError, match="parameter corrections"):
        ensemble_variants("all")


def test_every_ensemble_step_name_is_a_valid_mlflow_tag_key():
    from mlflow.utils.validation import _validate_tag_name

    for label in ensemble_variants("each"):
        _validate_tag_name(f"step.{ensemble_step(label)}")          # the parent run's step.<name> tag
    assert ensemble_step("published without head_dense_only") == "ensemble.published-without-head_dense_only"
