"""Writing the cropped dataset: layout, manifest, empty masks kept, all or nothing."""

import json

import numpy as np
import pandas as pd
import pytest

from multiloss.data.readers import class_counts, read_kermany
from multiloss.segmentation import cropped_dataset
from multiloss.segmentation.cropped_dataset import crop_dataset


class CentreLungs:
    """Stands in for a U-Net: lung probability 0.9 in a centred box, 0 elsewhere."""

    def __init__(self, empty_every: int = 0):
        self.empty_every = empty_every
        self.seen = 0

    def predict(self, images, batch_size=8, verbose=0):
        n, h, w = images.shape[:3]
        out = np.zeros((n, h, w, 1), np.float32)
        out[:, h // 4: 3 * h // 4, w // 4: 3 * w // 4] = 0.9
        for i in range(n):
            self.seen += 1
            if self.empty_every and self.seen % self.empty_every == 0:
                out[i] = 0.0
        return out


class Exploding(CentreLungs):
    def predict(self, images, batch_size=8, verbose=0):
        if self.seen >= 8:
            raise RuntimeError("killed mid-crop")
        return super().predict(images, batch_size, verbose)


def test_cropped_dataset_reads_back_with_the_same_counts(kermany_dir, tmp_path):
    frame = read_kermany(kermany_dir)
    out = tmp_path / "cropped"
    manifest = crop_dataset(frame, kermany_dir, out, [CentreLungs(), CentreLungs(empty_every=5)],
                            seg_size=32, img_size=24, batch_size=4, progress=lambda _: None)
    again = read_kermany(out)
    assert class_counts(again).equals(class_counts(frame))
    assert set(again["source_split"]) == {"train", "test", "val"}
    assert (out / "masks" / "train" / "PNEUMONIA" / "person1_bacteria_1.png").is_file()
    written = pd.read_csv(out / "manifest.csv")
    assert len(written) == len(frame) == len(manifest)
    # the AND of the two members is empty wherever the second one saw nothing: every 5th image
    assert written["empty_mask"].sum() == len(frame) // 5
    summary = json.loads((out / "crop.json").read_text())
    assert summary["n_empty_masks"] == len(frame) // 5 and len(summary["empty_masks"]) == len(frame) // 5
    box = [int(v) for v in written.loc[~written["empty_mask"], "box"].iloc[0].split()]
    assert box == [8, 10, 32, 38]   # centre half of a 40x48 image, plus a 2 % margin (1 px)
    from multiloss.data.imageio import read_gray
    assert read_gray(again["path"].iloc[0]).shape == (24, 24)


def test_interrupted_crop_leaves_nothing_behind(kermany_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(cropped_dataset, "CHUNK_PIXELS", 1)         # one batch per predict call: killed after 8 images
    out = tmp_path / "cropped"
    with pytest.raises(RuntimeError, match="killed mid-crop"):
        crop_dataset(read_kermany(kermany_dir), kermany_dir, out, [Exploding()], seg_size=32, img_size=24,
                     batch_size=4, progress=lambda _: None)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".cropped")]


def test_existing_output_is_refused_and_kept(kermany_dir, tmp_path):
    out = tmp_path / "cropped"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="cropped already exists and is not empty \\(nor an earlier crop\\)"):
        crop_dataset(read_kermany(kermany_dir), kermany_dir, out, [CentreLungs()], seg_size=32, img_size=24)
    assert (out / "keep.txt").read_text() == "mine"


def test_relative_and_symlinked_data_paths(kermany_dir, tmp_path, monkeypatch):
    link = tmp_path / "link"
    link.symlink_to(kermany_dir)
    monkeypatch.chdir(tmp_path)
    for name, data in (("rel", "chest_xray"), ("sym", "link")):
        manifest = crop_dataset(read_kermany(data), data, tmp_path / name, [CentreLungs()], seg_size=32,
                                img_size=24, batch_size=4, progress=lambda _: None)
        assert len(manifest) == len(read_kermany(kermany_dir)) == 14


def test_an_earlier_crop_is_replaced_whole(kermany_dir, tmp_path):
    from multiloss.data.imageio import read_gray
    out = tmp_path / "cropped"
    frame = read_kermany(kermany_dir)
    for size in (24, 16):
        crop_dataset(frame, kermany_dir, out, [CentreLungs()], seg_size=32, img_size=size, progress=lambda _: None)
        assert {read_gray(p).shape for p in read_kermany(out)["path"]} == {(size, size)}
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
