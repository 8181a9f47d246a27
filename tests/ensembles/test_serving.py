"""The served ensemble's inputs: arrays are read as the same images in files would be."""

import numpy as np
import pytest


def test_pyfunc_inputs_arrays_read_like_files(tmp_path):
    import cv2

    from multiloss.data.imageio import read_gray
    from multiloss.ensembles.serving import expand_inputs

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "scan.png"), rgb[..., ::-1])          # a file stores BGR
    names, images, codecs = expand_inputs([str(tmp_path)])
    assert names == [str(tmp_path / "scan.png")] and codecs == [".png"]
    np.testing.assert_array_equal(images[0], read_gray(tmp_path / "scan.png"))
    _, from_array, array_codecs = expand_inputs(rgb)                   # one RGB image, not 20 rows
    assert len(from_array) == 1 and array_codecs == [None]
    np.testing.assert_array_equal(from_array[0], images[0])
    _, floats, _ = expand_inputs(rgb.astype(np.float32) / 255.0)
    assert np.abs(floats[0].astype(int) - images[0]).max() <= 1
    twelve_bit = (rng.integers(0, 4096, (2, 8, 8))).astype(np.uint16)   # a batch of two 12-bit images
    _, batch, _ = expand_inputs(twelve_bit)
    assert len(batch) == 2 and batch[0].max() > 200 and (batch[0] < 255).mean() > 0.9
    with pytest.raises(ValueError, match="no images given"):
        expand_inputs([])



def test_the_code_wheel_installs_our_package_and_names_its_code(tmp_path):
    """The wheel a served model installs (``--env-manager uv``): pip takes it, it holds the package
    that unpickles EnsemblePipeline, and its folder is named by the code (the same code, the same name)."""
    import subprocess
    import sys

    from multiloss.ensembles.serving import package_wheel

    wheel = package_wheel(tmp_path / "a", requires=["numpy"])
    assert wheel.parent.name.startswith("multiloss-wheel-") and wheel.name.endswith("-py3-none-any.whl")
    assert package_wheel(tmp_path / "b", requires=["numpy"]).parent.name == wheel.parent.name    # same code
    result = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                             "--target", str(tmp_path / "site"), str(wheel)], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "site" / "multiloss" / "ensembles" / "serving.py").is_file()
    metadata = next((tmp_path / "site").glob("multiloss-*.dist-info")) / "METADATA"
    assert "Requires-Dist: numpy" in metadata.read_text()
