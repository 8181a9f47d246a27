"""Pipeline profiles: the parameters they give each stage, a missing profile, main's overrides."""

import pytest

from multiloss.pipeline import engine, profiles

PROJECT = engine.entry_points()


@pytest.mark.parametrize("name", ["demo", "paper"])
def test_profiles_name_only_parameters_their_entry_points_have(name):
    profile = profiles.load_profile(name)
    for stage in ("synth", "segment", "segment_eval", "crop", "classify", "ensemble", "gradcam"):
        if stage in PROJECT:       # entry points other sessions add may not be there yet
            engine.resolve_params(stage, PROJECT[stage], profiles.stage_settings(profile, stage))
    assert set(profile["segment"]["losses"]) | set(profile["classify"]["losses"])
    assert profiles.data_layout(profile, synthetic=False) == {"lungs": "lungs", "holdout": "MontgomerySet",
                                                              "kermany": "chest_xray"}


def test_a_profiles_layout_renames_a_users_folders_but_not_the_synthetic_ones():
    profile = {"layout": {"holdout": "Montgomery-County"}}
    assert profiles.data_layout(profile, synthetic=False)["holdout"] == "Montgomery-County"
    assert profiles.data_layout(profile, synthetic=True)["holdout"] == "MontgomerySet"
    with pytest.raises(ValueError, match="unknown folder key.*montgomery"):
        profiles.data_layout({"layout": {"montgomery": "x"}}, synthetic=False)


def test_unknown_profile_is_named():
    with pytest.raises(ValueError, match=r"profile 'nope': no file .*nope\.yaml \(profiles in .*demo"):
        profiles.load_profile("nope")


def test_overrides_apply_to_both_trainings_and_leave_the_profile_alone():
    profile = profiles.load_profile("demo")
    changed = profiles.with_overrides(profile, img_size=96, epochs=2, seg_losses="bce, focal", cls_losses="cce")
    assert [changed[s]["img_size"] for s in ("segment", "classify")] == [96, 96]
    assert [changed[s]["epochs"] for s in ("segment", "classify")] == [2, 2]
    assert changed["segment"]["losses"] == ["bce", "focal"] and changed["classify"]["losses"] == ["cce"]
    assert profile["segment"]["losses"] != ["bce", "focal"]
    with pytest.raises(ValueError, match=r"the classify losses name cce, kld more than once \(main's cls_losses"):
        profiles.with_overrides(profile, cls_losses="cce,kld,focal,kld,cce")
