"""Patient-grouped, class-stratified validation split and its CSV artifact."""

import numpy as np
import pandas as pd
import pytest

from multiloss.data.fingerprint import fingerprint
from multiloss.data.imageio import DataError
from multiloss.data.split import patient_split, write_split_csv


def synthetic_frame(seed=0, n_patients=300):
    """Patients with 1-4 images each; a few pneumonia patients have both bacterial and viral images."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        label = rng.choice(["normal", "bacterial", "viral"], p=[0.3, 0.45, 0.25])
        for k in range(rng.integers(1, 5)):
            this = "viral" if label == "bacterial" and p % 17 == 0 and k == 1 else label
            rows.append({"path": f"/d/train/person{p}_{k}.jpeg", "split": "train", "label": this, "patient": f"person{p}"})
    rows.append({"path": "/d/test/person9999_0.jpeg", "split": "test", "label": "normal", "patient": "person9999"})
    return pd.DataFrame(rows)


def test_no_patient_on_both_sides_and_class_ratios_kept():
    frame = synthetic_frame()
    split = patient_split(frame, fraction=0.1, seed=3)
    assert "test" not in set(split["split"])   # only the training images are split
    train_patients = set(split.loc[split["subset"] == "train", "patient"])
    val_patients = set(split.loc[split["subset"] == "val", "patient"])
    assert not train_patients & val_patients
    assert 0.07 < (split["subset"] == "val").mean() < 0.13
    overall = split["label"].value_counts(normalize=True)
    in_val = split.loc[split["subset"] == "val", "label"].value_counts(normalize=True)
    for label in overall.index:
        assert abs(in_val[label] - overall[label]) < 0.08, label


def test_split_is_fixed_by_seed():
    frame = synthetic_frame()
    a = patient_split(frame, seed=1)["subset"].tolist()
    assert a == patient_split(frame, seed=1)["subset"].tolist()
    assert a != patient_split(frame, seed=2)["subset"].tolist()


def test_too_few_patients_and_bad_fraction():
    frame = synthetic_frame(n_patients=5)
    with pytest.raises(DataError, match="at least 10 patients in train, found 5"):
        patient_split(frame)
    few_viral = synthetic_frame()
    few_viral = few_viral[(few_viral["label"] != "viral") | (few_viral.index % 40 == 0)]
    with pytest.raises(DataError, match=r"class viral has \d training images; a 1/10 validation split needs at least 10"):
        patient_split(few_viral)
    with pytest.raises(ValueError, match="fraction must be in"):
        patient_split(synthetic_frame(), fraction=0.9)


def test_split_csv_is_relative_and_complete(tmp_path):
    split = patient_split(synthetic_frame())
    path = write_split_csv(split, tmp_path / "split.csv", root="/d")
    table = pd.read_csv(path)
    assert list(table.columns) == ["path", "label", "patient", "subset"]
    assert len(table) == len(split) and table["path"].str.startswith("train/").all()
    assert [p.name for p in tmp_path.iterdir()] == ["split.csv"]


def test_fingerprint_changes_with_content_and_names_not_order(tmp_path):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    a.write_bytes(b"1")
    b.write_bytes(b"2")
    first = fingerprint([a, b], root=tmp_path)
    assert first == fingerprint([b, a], root=tmp_path)
    b.write_bytes(b"3")
    assert fingerprint([a, b], root=tmp_path) != first
