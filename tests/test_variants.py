"""Variants: parsing, scopes and what each classifier of a pipeline gets."""

import pytest

from multiloss import variants


def test_corrected_and_published():
    assert variants.parse("").flaws == () and variants.parse("corrected").name == "corrected"
    published = variants.parse("published")
    assert published.flaws == tuple(f.name for f in variants.FLAWS) and published.name == "published"


def test_flaw_lists_are_canonical_whatever_their_order_or_separator():
    a = variants.parse("test_selection,calibration_no_gradient")
    b = variants.parse("calibration_no_gradient+test_selection")
    assert a == b and a.name == "calibration_no_gradient+test_selection"


@pytest.mark.parametrize("text, loss, flaws, name", [
    ("published", "cal_cce", ("calibration_no_gradient",), "published"),
    ("published", "cce", (), "corrected"),           # nothing acts: the corrected training, reused as such
    ("published", "cce_entropy", ("entropy_unattached",), "published"),
    ("published", "ls_focal", ("smoothing_half",), "published"),
    ("calibration_no_gradient,stacking_on_train", "cal_hinge", ("calibration_no_gradient",),
     "calibration_no_gradient"),
    ("calibration_no_gradient,stacking_on_train", "cce", (), "corrected"),
    ("corrected", "cal_cce", (), "corrected"),
])
def test_each_classifier_of_a_pipeline_gets_the_flaws_acting_on_its_loss(text, loss, flaws, name):
    chosen = variants.parse(text).for_loss(loss)
    assert (chosen.flaws, chosen.name) == (flaws, name)
    assert variants.for_training(chosen.name, loss) == chosen     # and classify accepts what main passes


def test_members_of_an_ensemble_variant_are_its_loss_part():
    assert variants.parse("published").members.acting_on("cal_kld") == ("calibration_no_gradient",)
    assert variants.parse("test_selection").members.flaws == ()


def test_tags_round_trip():
    tags = variants.tags(variants.parse("published").for_loss("cal_cce"))
    assert tags == {"variant": "published", "variant.flaws": "calibration_no_gradient"}
    assert variants.tagged_flaws(tags) == ("calibration_no_gradient",)
    assert variants.tagged_flaws({}) == ()


def test_unknown_flaws_are_named():
    with pytest.raises(ValueError, match="unknown flaw calibration, smooth"):
        variants.parse("calibration,smooth")


def test_a_named_loss_flaw_must_act_on_some_loss_of_a_pipeline():
    variants.check_acts(variants.parse("published"), ["cce"])
    variants.check_acts(variants.parse("smoothing_half,test_selection"), ["cce", "ls_focal"])
    with pytest.raises(ValueError, match="smoothing_half acts on none of the losses cce, focal"):
        variants.check_acts(variants.parse("smoothing_half"), ["cce", "focal"])
