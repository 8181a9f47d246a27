"""All-or-nothing file writes."""

import pytest

from multiloss.files import replacing


def test_replacing_writes_whole_or_not_at_all(tmp_path):
    target = tmp_path / "table.csv"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with replacing(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash mid-write")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["table.csv"]
    with replacing(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["table.csv"]


def test_replacing_folder_swaps_in_a_whole_folder_or_leaves_the_old_one(tmp_path):
    from multiloss.files import replacing_folder

    target = tmp_path / "dataset"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with replacing_folder(target) as tmp:
            (tmp / "half.txt").write_text("half")
            raise RuntimeError("crash mid-write")
    assert [p.name for p in tmp_path.iterdir()] == ["dataset"] and sorted(p.name for p in target.iterdir()) == ["old.txt"]

    def refuse():
        raise ValueError("someone wrote into dataset meanwhile")
    with pytest.raises(ValueError, match="meanwhile"):
        with replacing_folder(target, before_swap=refuse) as tmp:
            (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["old.txt"] and len(list(tmp_path.iterdir())) == 1

    with replacing_folder(target) as tmp:
        (tmp / "new.txt").write_text("new")
    assert [p.name for p in tmp_path.iterdir()] == ["dataset"] and sorted(p.name for p in target.iterdir()) == ["new.txt"]


def test_private_json_is_owner_only_and_whole(tmp_path):
    import json
    import stat

    from multiloss.files import write_private_json

    target = tmp_path / "secrets.json"
    write_private_json(target, {"password": "x"})
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert json.loads(target.read_text()) == {"password": "x"} and [p.name for p in tmp_path.iterdir()] == ["secrets.json"]
