"""Whether a data folder is the synthetic generator's, directly, below it, or through crops."""

import json

from multiloss.data.provenance import is_synthetic, synthetic_manifest
from multiloss.data.synthetic import write_synthetic


def test_synthetic_data_its_subfolders_and_crops_of_it_are_synthetic_and_others_not(tmp_path, kermany_dir):
    synth = tmp_path / "synth"
    write_synthetic(synth, n_seg=1, n_cls=2, size=32, seed=0)
    crop = tmp_path / "cropped"
    (crop / "chest_xray").mkdir(parents=True)
    (crop / "crop.json").write_text(json.dumps({"source": str(synth / "chest_xray")}))
    recrop = tmp_path / "recropped"
    recrop.mkdir()
    (recrop / "crop.json").write_text(json.dumps({"source": str(crop / "chest_xray")}))

    assert synthetic_manifest(synth) == (synth / "synth.json").resolve()
    assert is_synthetic(synth / "chest_xray") and is_synthetic(crop / "chest_xray") and is_synthetic(recrop)
    assert not is_synthetic(kermany_dir)
    (tmp_path / "real" / "chest_xray").mkdir(parents=True)
    (tmp_path / "real" / "crop.json").write_text(json.dumps({"source": str(kermany_dir)}))
    assert not is_synthetic(tmp_path / "real" / "chest_xray")


def test_a_crop_that_names_itself_as_its_source_ends(tmp_path):
    (tmp_path / "loop").mkdir()
    (tmp_path / "loop" / "crop.json").write_text(json.dumps({"source": str(tmp_path / "loop")}))
    assert not is_synthetic(tmp_path / "loop")
