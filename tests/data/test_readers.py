"""Kermany, Montgomery and image/mask pair readers on tiny copies of the real layouts."""

import shutil

import pytest

from multiloss.data.imageio import DataError
from multiloss.data.readers import (
    class_counts,
    find_kermany_root,
    read_kermany,
    read_mask_set,
    read_montgomery,
    read_pairs,
)
from tests.conftest import KERMANY_FILES, write_gray, write_mask


def test_nested_kermany_archive_is_found(kermany_dir):
    assert find_kermany_root(kermany_dir) == kermany_dir / "chest_xray"
    assert find_kermany_root(kermany_dir / "chest_xray") == kermany_dir / "chest_xray"


def test_kermany_classes_and_patients_come_from_names(kermany_dir):
    frame = read_kermany(kermany_dir).set_index("path")
    by_name = {p.rsplit("/", 1)[1]: row for p, row in frame.iterrows()}
    assert by_name["person1_bacteria_2.jpeg"][["label", "patient"]].tolist() == ["bacterial", "person1"]
    assert by_name["person10_virus_35.jpeg"][["label", "patient"]].tolist() == ["viral", "person10"]
    assert by_name["NORMAL2-IM-0927-0001.jpeg"][["label", "patient"]].tolist() == ["normal", "NORMAL2-IM-0927"]
    # The same person number is the same patient whether the file says bacteria or virus.
    assert by_name["person1000_virus_1681.jpeg"]["patient"] == by_name["person1000_bacteria_2931.jpeg"]["patient"]
    assert ".DS_Store" not in by_name and "._IM-0115-0001.jpeg" not in by_name


def test_extra_val_folder_is_counted_as_training(kermany_dir):
    frame = read_kermany(kermany_dir)
    val_rows = frame[frame["source_split"] == "val"]
    assert len(val_rows) == 2 and set(val_rows["split"]) == {"train"}
    counts = class_counts(frame)
    assert counts.loc["train"].tolist() == [4, 4, 2]   # 3 + 1 val NORMAL; 3 + 1 val bacteria; 2 virus
    assert counts.loc["test"].tolist() == [2, 1, 1]
    assert counts.to_numpy().sum() == sum(len(v) for v in KERMANY_FILES.values())


def test_pneumonia_name_without_cause_is_refused(kermany_dir):
    write_gray(kermany_dir / "chest_xray" / "train" / "PNEUMONIA" / "scan_17.jpeg")
    with pytest.raises(DataError, match=r"scan_17\.jpeg: PNEUMONIA file name does not say bacteria or virus"):
        read_kermany(kermany_dir)


def test_empty_class_folder_is_refused(kermany_dir):
    folder = kermany_dir / "chest_xray" / "test" / "NORMAL"
    shutil.rmtree(folder)
    folder.mkdir()
    with pytest.raises(DataError, match=r"test/NORMAL: folder holds no images"):
        read_kermany(kermany_dir)


def test_missing_class_is_refused(kermany_dir):
    (kermany_dir / "chest_xray" / "test" / "PNEUMONIA" / "person1680_virus_2897.jpeg").unlink()
    with pytest.raises(DataError, match=r"test: no images of class viral"):
        read_kermany(kermany_dir)


def test_truncated_file_is_named_by_the_reader(kermany_dir):
    path = kermany_dir / "chest_xray" / "train" / "NORMAL" / "IM-0117-0001.jpeg"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(DataError, match=r"IM-0117-0001\.jpeg: truncated JPEG"):
        read_kermany(kermany_dir)


def test_not_a_kermany_layout(tmp_path):
    (tmp_path / "train").mkdir()
    with pytest.raises(DataError, match="not a Kermany layout"):
        read_kermany(tmp_path)
    with pytest.raises(DataError, match="dataset folder not found"):
        read_kermany(tmp_path / "absent")


def test_montgomery_mask_is_left_or_right(montgomery_dir):
    frame = read_montgomery(montgomery_dir)
    assert [p.rsplit("/", 1)[1] for p in frame["image"]] == ["MCUCXR_0001_0.png", "MCUCXR_0002_1.png"]
    masks = frame["masks"].iloc[0]
    assert ["leftMask" in masks[0], "rightMask" in masks[1]] == [True, True]
    assert read_mask_set(montgomery_dir / "MontgomerySet").equals(frame)


def test_montgomery_missing_mask_is_named(montgomery_dir):
    (montgomery_dir / "MontgomerySet" / "ManualMask" / "rightMask" / "MCUCXR_0002_1.png").unlink()
    with pytest.raises(DataError, match=r"MCUCXR_0002_1\.png: no lung mask .*rightMask"):
        read_montgomery(montgomery_dir)


def test_mask_of_wrong_size_is_named(montgomery_dir):
    write_mask(montgomery_dir / "MontgomerySet" / "ManualMask" / "leftMask" / "MCUCXR_0001_0.png", size=(20, 20))
    with pytest.raises(DataError, match=r"leftMask/MCUCXR_0001_0\.png: mask is 20x20 but its image .* is 48x40"):
        read_montgomery(montgomery_dir)


def test_pairs_accept_same_stem_and_mask_suffix(pairs_dir):
    frame = read_pairs(pairs_dir)
    names = {img.rsplit("/", 1)[1]: masks[0].rsplit("/", 1)[1] for img, masks in zip(frame["image"], frame["masks"])}
    assert names == {"CHNCXR_0001_0.png": "CHNCXR_0001_0_mask.png", "case2.png": "case2.png"}
    assert read_mask_set(pairs_dir).equals(frame)


def test_pair_without_mask_is_named(pairs_dir):
    write_gray(pairs_dir / "images" / "lonely.png")
    with pytest.raises(DataError, match=r"lonely\.png: no mask named lonely"):
        read_pairs(pairs_dir)


def test_unknown_mask_layout(tmp_path):
    with pytest.raises(DataError, match="no lung mask set here"):
        read_mask_set(tmp_path)
