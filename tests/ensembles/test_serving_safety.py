"""The served ``cxr-ensemble`` through MLflow's own scoring server (its FastAPI app on a loopback port):
images sent as base64 bytes, paths read only under MULTILOSS_SERVE_ROOTS and refused alike whether
they exist or not, 400 answers that name the row and the reason without a traceback, and
``on_error=skip``. The pipeline is tiny and untrained (a 1×1-conv "U-Net", two pooled-softmax
"classifiers"): what is tested is the request handling, not the predictions."""

from __future__ import annotations

import base64
import json
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import mlflow
import numpy as np
import pandas as pd
import pytest
import requests

from multiloss.classification.scoring import PROBABILITY_COLUMNS
from multiloss.data.imageio import read_gray
from multiloss.ensembles import serving
from multiloss.tracking import store
from tests.conftest import tiny_ensemble_models

SERVING_FLAG = "_MLFLOW_IS_IN_SERVING_ENVIRONMENT"   # set by mlflow's scoring_server.init in its process


@dataclass
class Served:
    url: str            # the server's /invocations
    model: object       # the same pyfunc, loaded in this process
    model_path: str     # its local copy
    allowed: Path       # a folder to name in MULTILOSS_SERVE_ROOTS
    outside: Path       # a folder never named there


def _tiny_pipeline_uri() -> str:

    segmenters, classifiers = tiny_ensemble_models()
    config = {"seg_size": 16, "crop_size": 16, "margin": 0.05, "cls_size": 16, "codec": ".png",
              "classes": ["normal", "bacterial", "viral"]}
    with store.stage_run("ensembles", run_name="tiny served pipeline"):
        # fixed requirements: inferring them would load every model in a subprocess
        info = serving.log_pipeline(segmenters=segmenters, parts=classifiers,
                                    combiner="mean", config=config, pip_requirements=["mlflow"])
    return info.model_uri


def _files(root):
    """An allowed folder (a scan, a JPEG, a text file named .png, a symlink out), and beside it
    a folder outside the roots holding a secret scan."""
    allowed, outside = root / "allowed", root / "outside"
    (allowed / "scans").mkdir(parents=True)
    outside.mkdir()
    rng = np.random.default_rng(0)
    cv2.imwrite(str(allowed / "scans" / "scan.png"), rng.integers(0, 256, (40, 48), dtype=np.uint8))
    cv2.imwrite(str(allowed / "scans" / "scan.jpeg"), rng.integers(0, 256, (36, 30), dtype=np.uint8))
    (allowed / "broken.png").write_text("not an image at all\n")
    cv2.imwrite(str(outside / "a.png"), rng.integers(0, 256, (20, 20), dtype=np.uint8))   # b.png: never written
    (allowed / "leak").mkdir()
    os.symlink(outside / "a.png", allowed / "leak" / "link.png")
    return allowed, outside


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """One tiny pipeline, logged and served once for the module by MLflow's scoring server in a
    thread of this process."""
    import uvicorn
    from mlflow.pyfunc import scoring_server

    home = tmp_path_factory.mktemp("served")
    was_serving = os.environ.get(SERVING_FLAG)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MULTILOSS_HOME", str(home / "home"))
        for name in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", serving.ROOTS_ENV):
            patch.delenv(name, raising=False)
        local = mlflow.artifacts.download_artifacts(_tiny_pipeline_uri(), dst_path=str(home / "model"))
    model = mlflow.pyfunc.load_model(local)
    allowed, outside = _files(home)
    app = scoring_server.init(model)                       # marks this process as serving
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="error"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started, "the scoring server did not start"
    yield Served(f"http://127.0.0.1:{sock.getsockname()[1]}/invocations", model, local, allowed, outside)
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()
    if was_serving is None:
        os.environ.pop(SERVING_FLAG, None)
    else:
        os.environ[SERVING_FLAG] = was_serving


@pytest.fixture
def roots(monkeypatch):
    """Sets the server's allowed folders for one test (read at each request)."""
    def set_roots(*folders):
        monkeypatch.setenv(serving.ROOTS_ENV, os.pathsep.join(str(f) for f in folders))
    monkeypatch.delenv(serving.ROOTS_ENV, raising=False)
    return set_roots


def _b64(path) -> str:
    return base64.b64encode(path.read_bytes()).decode("ascii")


def _post(url, columns, rows, **params):
    body = {"dataframe_split": {"columns": columns, "data": rows}}
    if params:
        body["params"] = params
    return requests.post(url, json=body, timeout=60)


def _error(response) -> str:
    """Our message in a 400 answer (MLflow puts its echo of the request before ``Error:``), after
    checking the answer carries no traceback."""
    assert response.status_code == 400, response.text
    body = response.json()
    assert "stack_trace" not in body and "Traceback" not in response.text and 'File "' not in response.text
    assert body["error_code"] == "INVALID_PARAMETER_VALUE"
    return body["message"].split("'. \nError: ", 1)[1]


def test_signature_declares_on_error_and_the_answer(served):
    model = served.model
    signature = model.metadata.signature
    assert signature.inputs is None          # MLflow would drop unknown columns before we could name them
    assert [(p.name, p.default) for p in signature.params.params] == [("on_error", "raise")]
    assert signature.outputs.input_names() == ["path", "row", *PROBABILITY_COLUMNS, "predicted", "synthetic", "error"]


def test_base64_bytes_are_predicted_as_the_same_files_would_be(served):
    url, model, allowed = served.url, served.model, served.allowed
    png, jpeg = allowed / "scans" / "scan.png", allowed / "scans" / "scan.jpeg"
    wrapped = base64.encodebytes(jpeg.read_bytes()).decode("ascii")       # line breaks, as `base64` writes
    answer = _post(url, ["image_base64"], [[_b64(png)], [wrapped]])
    assert answer.status_code == 200, answer.text
    rows = pd.DataFrame(answer.json()["predictions"])
    assert rows["row"].tolist() == [0, 1] and rows["path"].isna().all()
    expected = model.unwrap_python_model().predict_arrays([read_gray(png), read_gray(jpeg)], [".png", ".jpeg"])
    np.testing.assert_allclose(rows[PROBABILITY_COLUMNS].to_numpy(float), expected, atol=1e-6)
    assert set(rows["predicted"]) <= {"normal", "bacterial", "viral"}


def test_a_path_under_the_roots_is_read(served, roots):
    url, allowed = served.url, served.allowed
    roots(allowed)
    answer = _post(url, ["path"], [[str(allowed / "scans")], [str(allowed / "scans" / "scan.png")]])
    assert answer.status_code == 200, answer.text
    rows = pd.DataFrame(answer.json()["predictions"])
    assert rows["path"].tolist() == [str(allowed / "scans" / "scan.jpeg"), str(allowed / "scans" / "scan.png"),
                                     str(allowed / "scans" / "scan.png")]
    assert rows["row"].tolist() == [0, 0, 1]
    np.testing.assert_allclose(rows.loc[1, PROBABILITY_COLUMNS].to_numpy(float),
                               rows.loc[2, PROBABILITY_COLUMNS].to_numpy(float))


def test_paths_are_refused_by_default_and_outside_the_roots_alike_whether_or_not_they_exist(served, roots):
    url, allowed, outside = served.url, served.allowed, served.outside
    scan = str(allowed / "scans" / "scan.png")
    assert "is not under a folder this server may read (MULTILOSS_SERVE_ROOTS)" in _error(_post(url, ["path"], [[scan]]))

    roots(allowed)
    existing, missing = _post(url, ["path"], [[str(outside / "a.png")]]), _post(url, ["path"], [[str(outside / "b.png")]])
    assert existing.status_code == missing.status_code == 400
    # alike: our messages differ only in the name (MLflow's echo of the request may cut a long path short)
    assert _error(existing).replace("a.png", "?.png") == _error(missing).replace("b.png", "?.png")
    assert _error(existing) == (f"row 0: path {str(outside / 'a.png')!r} is not under a folder this server may "
                                "read (MULTILOSS_SERVE_ROOTS)")
    for trick in (f"{allowed}/../outside/a.png", f"{allowed}/scans/../../outside/b.png",
                  f"{allowed}/leak/link.png", f"{allowed}/leak", "../../../../../../etc/passwd", "/"):
        message = _error(_post(url, ["path"], [[trick]]))
        assert "is not under a folder this server may read" in message, (trick, message)


def test_bad_inputs_answer_400_naming_the_row_and_the_reason(served, roots):
    url, allowed = served.url, served.allowed
    roots(allowed)
    good = _b64(allowed / "scans" / "scan.png")
    missing = str(allowed / "scans" / "gone.png")
    message = _error(_post(url, ["path"], [[str(allowed / "scans" / "scan.png")], [missing]]))
    assert message.startswith(f"row 1: {missing}: cannot read file (No such file or directory)")
    assert "1 of 2 images cannot be used" in message
    assert _error(_post(url, ["path"], [[str(allowed / "broken.png")]])).startswith(
        f"row 0: {allowed / 'broken.png'}: not a readable image")
    assert _error(_post(url, ["image_base64"], [[good], ["aGVsbG8="]])).startswith(
        "row 1 (image_base64): not a JPEG or PNG file")
    assert _error(_post(url, ["image_base64"], [["%%% not base64"]])).startswith("row 0 (image_base64): not valid base64")
    truncated = base64.b64encode((allowed / "scans" / "scan.png").read_bytes()[:60]).decode()
    assert _error(_post(url, ["image_base64"], [[truncated]])).startswith("row 0 (image_base64): truncated PNG")
    assert _error(_post(url, ["image_base64", "path"], [[good, missing]])).startswith(
        "row 0: fills image_base64 and path; give one image per row")
    assert _error(_post(url, ["file"], [["scan.png"]])).startswith(
        "the request needs an 'image_base64' column (base64-encoded JPEG or PNG bytes) or a 'path' column")
    assert "it has columns ['file']" in _error(_post(url, ["file"], [["scan.png"]]))
    assert _error(_post(url, ["image_base64"], [])).startswith("no images given")
    assert _error(_post(url, ["image_base64"], [[good]], on_error="ignore")) == (
        "params.on_error must be one of ['raise', 'skip'], got 'ignore'")
    bare = requests.post(url, json={"inputs": [good]}, timeout=60)
    assert _error(bare).startswith("the request is a bare list (1 values), not a table; send an 'image_base64'")
    csv = requests.post(url, data="image_base64\nnot-an-image\n", headers={"Content-Type": "text/csv"}, timeout=60)
    assert _error(csv).startswith("row 0 (image_base64): not")


def test_on_error_skip_answers_the_good_rows_and_gives_the_bad_ones_their_reason(served, roots):
    url, allowed, outside = served.url, served.allowed, served.outside
    roots(allowed)
    good = _b64(allowed / "scans" / "scan.png")
    answer = _post(url, ["image_base64", "path"],
                   [[good, None], ["aGVsbG8=", None], [None, str(outside / "a.png")],
                    [None, str(allowed / "scans")], [None, None]], on_error="skip")
    assert answer.status_code == 200, answer.text
    rows = pd.DataFrame(answer.json()["predictions"])
    assert rows["row"].tolist() == [0, 1, 2, 3, 3, 4]
    ok = rows["error"].isna()
    assert ok.tolist() == [True, False, False, True, True, False]
    assert np.isfinite(rows.loc[ok, PROBABILITY_COLUMNS].to_numpy(float)).all()
    assert rows.loc[~ok, PROBABILITY_COLUMNS].isna().all().all() and rows.loc[~ok, "predicted"].isna().all()
    assert rows.loc[1, "error"].startswith("row 1 (image_base64): not a JPEG or PNG file")
    assert "is not under a folder this server may read" in rows.loc[2, "error"]
    assert rows.loc[5, "error"] == "row 4: no image (image_base64 and path empty)"


def test_a_failure_inside_the_model_answers_500_without_its_traceback(served, monkeypatch):
    url, model, allowed = served.url, served.model, served.allowed

    def broken(*args, **kwargs):
        raise RuntimeError("segmenter exploded reading /srv/secret/weights")

    monkeypatch.setattr(model.unwrap_python_model(), "predict_arrays", broken)
    answer = _post(url, ["image_base64"], [[_b64(allowed / "scans" / "scan.png")]])
    assert answer.status_code == 500
    assert "Traceback" not in answer.text and "/srv/secret" not in answer.text and "stack_trace" not in answer.json()
    assert "the model failed while predicting (RuntimeError)" in answer.json()["message"]


def test_library_callers_and_batch_predict_still_read_any_path(served, tmp_path, monkeypatch):
    """Our own code (expand_inputs, predict_arrays), an in-process pyfunc and `mlflow models
    predict` (the operator's own input file) are not the server: no roots apply to them."""
    from mlflow.pyfunc import scoring_server

    model, outside = served.model, served.outside
    names, images, codecs = serving.expand_inputs([str(outside)])
    assert names == [str(outside / "a.png")] and codecs == [".png"] and images[0].shape == (20, 20)

    monkeypatch.delenv(SERVING_FLAG, raising=False)
    assert serving.path_roots() is None
    assert model.predict([str(outside / "a.png")])["path"].tolist() == [str(outside / "a.png")]

    monkeypatch.setenv(SERVING_FLAG, "true")
    request, out = tmp_path / "request.csv", tmp_path / "out.json"
    pd.DataFrame({"path": [str(outside / "a.png")]}).to_csv(request, index=False)
    scoring_server._predict(served.model_path, str(request), str(out), "csv")
    assert [r["path"] for r in json.loads(out.read_text())["predictions"]] == [str(outside / "a.png")]


def test_a_folder_is_read_one_chunk_at_a_time(served, tmp_path, monkeypatch):
    """A folder of full-resolution X-rays must not be held whole: no file is decoded when the
    request is read, and at most CHUNK images are in memory at a time; a file that turns out
    unreadable in a later chunk is skipped (or refused) like any other bad image."""
    model = served.model
    folder = tmp_path / "many"
    folder.mkdir()
    rng = np.random.default_rng(1)
    count = serving.CHUNK + 5
    for i in range(count):
        cv2.imwrite(str(folder / f"x{i:03d}.png"), rng.integers(0, 256, (24, 20), dtype=np.uint8))
    (folder / f"x{count:03d}.png").write_text("a text file, named as an image\n")   # the last, second chunk
    items = serving.request_items([str(folder)])
    assert len(items) == count + 1 and all(item.image is None and item.file for item in items)

    python_model = model.unwrap_python_model()
    original, held = python_model.predict_arrays, []
    decoded = []
    monkeypatch.setattr(serving, "read_gray", lambda path: decoded.append(path) or read_gray(path))

    def recording(originals, codecs=None):
        held.append((len(originals), len(decoded)))
        return original(originals, codecs)
    monkeypatch.setattr(python_model, "predict_arrays", recording)
    monkeypatch.delenv(SERVING_FLAG, raising=False)
    answer = model.predict(pd.DataFrame({"path": [str(folder)]}), params={"on_error": "skip"})
    assert held == [(serving.CHUNK, serving.CHUNK), (5, count + 1)]   # decoded by the time of each call
    assert answer["error"].notna().tolist() == [False] * count + [True]
    assert answer["predicted"].notna().sum() == count
    held.clear()
    with pytest.raises(mlflow.exceptions.MlflowException, match=f"x{count:03d}.png"):
        model.predict(pd.DataFrame({"path": [str(folder)]}))
    assert held == [(serving.CHUNK, 2 * serving.CHUNK + 6)]          # the first chunk ran, then the refusal
