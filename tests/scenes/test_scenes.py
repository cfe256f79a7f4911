"""Large scenes without detectron2: band selection, GeoTIFF in and out, nodata, tiles, restarts."""
import json
import os

import numpy as np
import pytest
import rasterio
import torch
from PIL import Image
from rasterio.crs import CRS
from rasterio.transform import from_origin

from dinov3_m2f.modeling.semantic_inference import slide_inference
from dinov3_m2f.scenes.bands import BAND_FILE_NAME, BandSelection, read_band_file
from dinov3_m2f.scenes.jobs import run_scenes
from dinov3_m2f.scenes.readers import UnreadableSceneError, open_scene
from dinov3_m2f.scenes.segment import SlideSettings, scene_outputs, segment_scene
from dinov3_m2f.scenes.tiles import cut_scene_tiles

NUM_CLASSES = 3
HEIGHT, WIDTH = 300, 270  # larger than a GeoTIFF tile (256), so the output is tiled
SCALE = 10  # 16-bit values are 10 x the 8-bit ones; band range 0..2550 maps them back exactly
SETTINGS = SlideSettings(crop_size=(64, 80), stride=(48, 50), block_size=(70, 100), slide_batch=2)
NODATA = (slice(10, 60), slice(200, 270))  # rows, columns of the nodata area


def _predict(crops):
    """Scores of RGB 0..255 crops that depend on the crop borders (a 3x3 conv), as a model's do."""
    conv = torch.nn.Conv2d(3, NUM_CLASSES, 3, padding=1)
    torch.nn.init.normal_(conv.weight, generator=torch.Generator().manual_seed(0))
    torch.nn.init.zeros_(conv.bias)
    with torch.no_grad():
        return conv(crops / 255.0 - 0.5).softmax(1)


@pytest.fixture(scope="module")
def rgb():
    return np.random.default_rng(0).integers(1, 256, size=(HEIGHT, WIDTH, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def geotiff(rgb, tmp_path_factory):
    """A 4-band uint16 GeoTIFF (bands 3, 2, 1 = R, G, B; band 4 noise), a CRS, nodata 0."""
    path = str(tmp_path_factory.mktemp("scene") / "scene.tif")
    bands = np.zeros((4, HEIGHT, WIDTH), dtype=np.uint16)
    bands[2], bands[1], bands[0] = (rgb[:, :, c].astype(np.uint16) * SCALE for c in range(3))
    bands[3] = 7
    bands[:, NODATA[0], NODATA[1]] = 0
    profile = dict(driver="GTiff", height=HEIGHT, width=WIDTH, count=4, dtype="uint16", nodata=0,
                   crs=CRS.from_epsg(32631), transform=from_origin(500000.0, 4600000.0, 0.5, 0.5),
                   tiled=True, blockxsize=64, blockysize=64)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(bands)
    return path


SELECTION = BandSelection.create(bands=[3, 2, 1], low=[0], high=[255 * SCALE])


def test_band_selection_scales_and_refuses_guesses(geotiff, tmp_path):
    selection = BandSelection.create(bands=[1, 2, 3], low=[0, 100, 0], high=[1000, 200, 10])
    values = np.array([[[500]], [[250]], [[5]]], dtype=np.uint16)  # [3, 1, 1]
    np.testing.assert_array_equal(selection.to_uint8(values)[0, 0], [128, 255, 128])
    with pytest.raises(ValueError, match="high"):
        BandSelection.create(bands=[1, 2, 3], low=[5], high=[5])
    with pytest.raises(ValueError, match="uint16.*--bands"):
        open_scene(geotiff)  # 16-bit without a range: never guessed
    with pytest.raises(ValueError, match="scene.tif has 4 band"):
        open_scene(geotiff, selection=BandSelection.create(bands=[5, 2, 1], low=[0], high=[1]))
    SELECTION.save(str(tmp_path / BAND_FILE_NAME))
    assert read_band_file(str(tmp_path / BAND_FILE_NAME)) == SELECTION
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="bad.json"):
        read_band_file(str(tmp_path / "bad.json"))


def test_geotiff_round_trip_matches_the_plain_image_path(geotiff, rgb, tmp_path):
    plain = rgb.copy()
    plain[NODATA] = 0  # nodata pixels are fed to the model as 0
    png = str(tmp_path / "plain.png")
    Image.fromarray(plain).save(png)
    out = str(tmp_path / "out")
    os.makedirs(out)
    names, colors = ["a", "b", "c"], [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    scene = open_scene(geotiff, selection=SELECTION)
    outputs = segment_scene(_predict, scene, output_dir=out, num_classes=NUM_CLASSES, settings=SETTINGS,
                            class_names=names, colors=colors, confidence=True, overviews=True,
                            overlay_max_size=100, progress=False)
    scene.close()
    png_outputs = segment_scene(_predict, open_scene(png), output_dir=out, num_classes=NUM_CLASSES,
                                settings=SETTINGS, progress=False)
    assert png_outputs.labels.endswith("plain_labels.png")
    with rasterio.open(outputs.labels) as ds:
        assert ds.crs == CRS.from_epsg(32631) and ds.transform == from_origin(500000.0, 4600000.0, 0.5, 0.5)
        assert ds.count == 1 and ds.dtypes[0] == "uint8" and ds.nodata == 255
        assert ds.profile["tiled"] and ds.compression.name.lower() == "deflate"
        assert json.loads(ds.tags()["class_names"]) == names and ds.tags()["class_1"] == "b"
        assert ds.colormap(1)[2][:3] == (0, 0, 255)
        assert len(ds.overviews(1)) == 5 and ds.overviews(1)[:4] == [2, 4, 8, 16]
        labels = ds.read(1)
    with rasterio.open(outputs.confidence) as ds:
        confidence = ds.read(1)
    plain_labels = np.asarray(Image.open(png_outputs.labels))
    nodata = np.zeros((HEIGHT, WIDTH), dtype=bool)
    nodata[NODATA] = True
    assert (labels[nodata] == 255).all() and (confidence[nodata] == 0).all()
    np.testing.assert_array_equal(labels[~nodata], plain_labels[~nodata])
    # ... and both equal the in-memory slide inference of the same pixels.
    image = torch.from_numpy(plain.transpose(2, 0, 1)).float()[None]
    scores = slide_inference(_predict, image, crop_size=SETTINGS.crop_size, stride=SETTINGS.stride,
                             num_classes=NUM_CLASSES)[0]
    np.testing.assert_array_equal(plain_labels, scores.argmax(0).numpy())
    expected_conf = (scores.max(0).values.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    assert np.abs(confidence[~nodata].astype(int) - expected_conf[~nodata]).max() <= 1
    overlay = np.asarray(Image.open(outputs.overlay))
    assert overlay.shape[0] == 100 and overlay.shape[1] > 100 * WIDTH // HEIGHT


def test_tiles_use_the_band_selection_and_ignore_nodata(geotiff, rgb, tmp_path):
    labels_path = str(tmp_path / "labels.tif")
    truth = (rgb[:, :, 0] % NUM_CLASSES).astype(np.uint8)
    with rasterio.open(labels_path, "w", driver="GTiff", height=HEIGHT, width=WIDTH, count=1,
                       dtype="uint8") as dst:
        dst.write(truth[None])
    written = cut_scene_tiles(geotiff, str(tmp_path / "tiles"), tile_size=128, selection=SELECTION,
                              labels_path=labels_path)
    assert len(written) == 3 * 3
    assert read_band_file(str(tmp_path / "tiles" / BAND_FILE_NAME)) == SELECTION
    tile = np.asarray(Image.open(tmp_path / "tiles" / "images" / "scene_0_142.png"))
    mask = np.asarray(Image.open(tmp_path / "tiles" / "masks" / "scene_0_142.png"))
    expected = rgb[:128, 142:270].copy()
    expected_mask = truth[:128, 142:270].copy()
    expected[10:60, 58:128] = 0
    expected_mask[10:60, 58:128] = 255
    np.testing.assert_array_equal(tile, expected)
    np.testing.assert_array_equal(mask, expected_mask)


def test_jobs_skip_done_scenes_and_report_a_bad_one(geotiff, rgb, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a.png", "b.png", "c.png"):
        Image.fromarray(rgb[:64, :96]).save(folder / name)
    (folder / "broken.tif").write_bytes(b"not a raster")
    files = sorted(str(p) for p in folder.iterdir())
    out = str(tmp_path / "out")
    calls = []

    def segment_one(path):
        calls.append(os.path.basename(path))
        scene = open_scene(path)
        segment_scene(_predict, scene, output_dir=out, num_classes=NUM_CLASSES, settings=SETTINGS,
                      progress=False)

    report = run_scenes(files, segment_one, output_dir=out)
    assert calls == ["a.png", "b.png", "broken.tif", "c.png"]
    assert [os.path.basename(p) for p, _ in report.failed] == ["broken.tif"]
    assert "UnreadableSceneError" in report.failed[0][1] and "broken.tif" in report.failed[0][1]
    first = {f: os.path.getmtime(scene_outputs(f, out).labels) for f in files if f.endswith(".png")}
    os.remove(scene_outputs(files[1], out).labels)  # b.png: as if the job stopped before it
    calls.clear()
    report = run_scenes(files, segment_one, output_dir=out)
    assert calls == ["b.png", "broken.tif"] and len(report.already_done) == 2
    for f in (files[0], files[3]):
        assert os.path.getmtime(scene_outputs(f, out).labels) == first[f]
    # Two processes share the scenes without overlap.
    shares = [run_scenes(files, lambda p: None, output_dir=str(tmp_path / "x"), rank=r, world_size=2)
              for r in (0, 1)]
    assert sorted(shares[0].segmented + shares[1].segmented) == files
    with pytest.raises(UnreadableSceneError, match="broken.tif"):
        open_scene(files[2])


def test_a_scene_failing_midway_leaves_no_file(geotiff, tmp_path):
    calls = []

    def failing_predict(crops):
        calls.append(1)
        if len(calls) > 3:
            raise RuntimeError("out of memory")
        return _predict(crops)

    scene = open_scene(geotiff, selection=SELECTION)
    with pytest.raises(RuntimeError, match="out of memory"):
        segment_scene(failing_predict, scene, output_dir=str(tmp_path), num_classes=NUM_CLASSES,
                      settings=SETTINGS, confidence=True, progress=False)
    scene.close()
    assert len(calls) == 4 and os.listdir(tmp_path) == []  # no labels, no confidence, no temporary file
