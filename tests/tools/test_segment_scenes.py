"""tools/segment_scenes.py on the tiny synthetic model: block-wise labels equal the in-memory
slide inference, a GeoTIFF gives the labels of its plain-image copy, restarts skip done scenes,
two processes write what one does."""
import os
import shutil
import subprocess
import sys

import pytest

pytest.importorskip("detectron2")

import numpy as np  # noqa: E402
import rasterio  # noqa: E402
from PIL import Image  # noqa: E402
from rasterio.crs import CRS  # noqa: E402
from rasterio.transform import from_origin  # noqa: E402

from dinov3_m2f.d2.predictor import SemSegPredictor  # noqa: E402
from helpers import REPO, TOOLS  # noqa: E402

CONFIG = os.path.join(REPO, "configs", "synthetic", "m2f_tiny_synthetic.py")
CROP, STRIDE, BLOCK = ("64", "96"), ("48", "64"), ("80", "112")
_TOOL_TIMEOUT_S = 600


def _tool(args, env, *, launcher=()):
    command = [*launcher, str(TOOLS / "segment_scenes.py"), *args, "--config-file", CONFIG,
               "--device", "cpu", "--crop-size", *CROP, "--stride", *STRIDE, "--block-size", *BLOCK,
               "--slide-batch", "2"]
    if not launcher:
        command.insert(0, sys.executable)
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=_TOOL_TIMEOUT_S)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """Three plain scenes (one 190x250: blocks and windows do not divide it), a GeoTIFF of the
    first one (16-bit, bands reversed, a nodata area) and a corrupt raster."""
    folder = tmp_path_factory.mktemp("scenes")
    rng = np.random.default_rng(0)
    images = [rng.integers(1, 256, size=size, dtype=np.uint8) for size in [(190, 250, 3), (100, 96, 3), (64, 130, 3)]]
    images[0][150:, :40] = 0  # the GeoTIFF's nodata area, fed to the model as 0
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"plain{i}.png")
    bands = (images[0].transpose(2, 0, 1)[::-1].astype(np.uint16) * 100)  # bands 3, 2, 1 = R, G, B
    with rasterio.open(folder / "geo.tif", "w", driver="GTiff", height=190, width=250, count=3,
                       dtype="uint16", nodata=0, crs=CRS.from_epsg(3857),
                       transform=from_origin(1000.0, 2000.0, 2.0, 2.0)) as dst:
        dst.write(bands)
    (folder / "zbroken.tif").write_bytes(b"II*\x00garbage")
    return folder, images


def test_segment_scenes_tool(scenes, tiny_synthetic_checkpoint, synthetic_env, tmp_path):
    folder, images = scenes
    out = tmp_path / "one"
    common = ["--checkpoint", tiny_synthetic_checkpoint, "--bands", "3", "2", "1", "--band-low", "0",
              "--band-high", "25500"]
    proc = _tool([str(folder), "--output", str(out), *common, "--overlay", "--overlay-max-size", "100"],
                 synthetic_env)
    assert proc.returncode == 1, proc.stderr[-3000:]  # the corrupt raster
    assert "zbroken.tif" in proc.stderr and "1 of 5 scene(s) have no labels" in proc.stderr
    assert sorted(os.listdir(out)) == sorted(
        [f"{s}_{k}" for s in ("plain0", "plain1", "plain2") for k in ("labels.png", "overlay.png")]
        + ["geo_labels.tif", "geo_overlay.png"])

    # Block-wise labels equal the in-memory slide inference of SemSegPredictor.
    predictor = SemSegPredictor.from_config(CONFIG, checkpoint=tiny_synthetic_checkpoint, device="cpu", overrides=[
        "model.test_mode=slide", f"model.slide_crop_size=[{','.join(CROP)}]",
        f"model.slide_stride=[{','.join(STRIDE)}]"])
    for i, image in enumerate(images):
        np.testing.assert_array_equal(np.asarray(Image.open(out / f"plain{i}_labels.png")), predictor(image))
    # The GeoTIFF: its georeference, 255 at nodata, elsewhere the labels of the plain image.
    with rasterio.open(out / "geo_labels.tif") as ds:
        assert ds.crs == CRS.from_epsg(3857) and ds.transform == from_origin(1000.0, 2000.0, 2.0, 2.0)
        geo = ds.read(1)
    plain = np.asarray(Image.open(out / "plain0_labels.png"))
    nodata = np.zeros(plain.shape, dtype=bool)
    nodata[150:, :40] = True
    assert (geo[nodata] == 255).all()
    np.testing.assert_array_equal(geo[~nodata], plain[~nodata])

    # A restart skips the scenes done; two processes write what one did.
    os.remove(out / "plain1_labels.png")
    before = os.path.getmtime(out / "plain0_labels.png")
    proc = _tool([str(folder), "--output", str(out), *common], synthetic_env)
    assert "plain0.png: already done" in proc.stderr and os.path.getmtime(out / "plain0_labels.png") == before
    assert (out / "plain1_labels.png").is_file()
    two = tmp_path / "two"
    inputs = [str(folder / f"plain{i}.png") for i in range(3)]
    proc = _tool([*inputs, "--output", str(two), "--checkpoint", tiny_synthetic_checkpoint,
                  "--num-gpus", "2"], synthetic_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "process 0/2" in proc.stderr and "process 1/2" in proc.stderr
    torchrun = tmp_path / "torchrun"
    proc = _tool([*inputs, "--output", str(torchrun), "--checkpoint", tiny_synthetic_checkpoint], synthetic_env,
                 launcher=(sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    for i in range(3):
        for folder in (two, torchrun):
            np.testing.assert_array_equal(np.asarray(Image.open(folder / f"plain{i}_labels.png")),
                                          np.asarray(Image.open(out / f"plain{i}_labels.png")))
    shutil.rmtree(two)
    shutil.rmtree(torchrun)
