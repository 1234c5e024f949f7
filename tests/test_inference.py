"""The original test-time algorithm: geometry rules, the sliding-window/scale/flip machinery, taxonomies."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_hrnet
from torch import nn

from mseg_semantic import InputError, TaxonomyError
from mseg_semantic.inference import InferenceConfig, Segmenter, load_config, preset_names
from mseg_semantic.inference.geometry import max_base_size, resize_rows, window_starts
from mseg_semantic.inference.reference import reference_predict_proba
from mseg_semantic.inference.windows import window_grid
from mseg_semantic.models import build_model
from mseg_semantic.normalization import MEAN_RGB, STD_RGB, normalize
from mseg_semantic.resizing import resize_short_side, scaled_short_side_size
from mseg_semantic.taxonomy import TaxonomyConverter


def cv2_resize_chw(maps: np.ndarray, h: int, w: int) -> np.ndarray:
    """OpenCV INTER_LINEAR on (C, h, w), in chunks of <= 4 channels (OpenCV 5 refuses > 128 channels)."""
    out = [cv2.resize(np.ascontiguousarray(maps[c : c + 4].transpose(1, 2, 0)), (w, h), interpolation=cv2.INTER_LINEAR)
           for c in range(0, maps.shape[0], 4)]  # fmt: skip
    return np.concatenate([o.reshape(h, w, -1).transpose(2, 0, 1) for o in out])


def random_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


# ---------------------------------------------------------------------------- geometry (the original's unit cases)
def test_short_side_resize_rules():
    assert scaled_short_side_size(4, 6, 8) == (8, 12)
    assert scaled_short_side_size(4, 6, 12) == (12, 18)  # scale 1.5 of base 8
    assert scaled_short_side_size(6, 4, 8) == (12, 8)  # portrait
    assert scaled_short_side_size(5, 5, 3) == (3, 3)
    assert scaled_short_side_size(1080, 1920, 360) == (360, 640)
    assert scaled_short_side_size(500, 990, round(0.75 * 360)) == (270, 535)  # 534.6 -> 535
    assert resize_short_side(np.zeros((4, 6, 3), np.float32), 8).shape == (8, 12, 3)


def test_mean_padding_geometry():
    grid = window_grid(4, 6, 8, 8)
    assert grid.canvas == (8, 8) and (grid.pad_top, grid.pad_left) == (2, 1)
    grid = window_grid(5, 5, 8, 8)
    assert (grid.pad_top, grid.pad_left) == (1, 1)  # the odd pixel of padding at the bottom/right
    grid = window_grid(9, 9, 8, 8)
    assert grid.canvas == (9, 9) and (grid.pad_top, grid.pad_left) == (0, 0)
    # The canvas is padded with 0 after normalisation, which is the mean pixel before it.
    mean_pixel = torch.tensor(MEAN_RGB, dtype=torch.float32).view(3, 1, 1)
    assert normalize(mean_pixel).abs().max() == 0


def test_windows_and_batched_base_size():
    assert window_starts(713, 713) == [0]
    assert window_starts(1080, 713) == [0, 367]
    assert window_starts(1920, 713) == [0, 476, 952, 1207]
    assert window_starts(1280, 713) == [0, 476, 567]
    assert max_base_size(1200, 1920, 473) == 295


def test_presets_equal_the_original_configs():
    assert preset_names()[:6] == ["360_ss", "360_ms", "720_ss", "720_ms", "1080_ss", "1080_ms"]
    for name in preset_names()[:6]:
        cfg = load_config(name)
        assert cfg.base_size == int(name.split("_")[0]) and (cfg.crop_h, cfg.crop_w) == (713, 713) and cfg.flip
        assert cfg.scales == ((1.0,) if name.endswith("ss") else (0.5, 0.75, 1.0, 1.25, 1.5, 1.75))
    for name, crop in [("batched_480", 473), ("batched_720", 593), ("batched_1080", 713)]:
        cfg = load_config(name)
        assert cfg.batched and cfg.base_size is None and cfg.crop_h == crop and cfg.scales == (1.0,)
    cfg = load_config("360_ms", scales=[1.0], crop_size=129, flip=False)
    assert (cfg.scales, cfg.crop_h, cfg.crop_w, cfg.flip, cfg.base_size) == ((1.0,), 129, 129, False, 360)


def test_config_files(tmp_path):
    ours = tmp_path / "mine.yaml"
    ours.write_text("base_size: 512\nscales: [1.0, 2.0]\ncrop_h: 257\ncrop_w: 257\n")
    cfg = load_config(ours)
    assert (cfg.base_size, cfg.scales, cfg.crop_h) == (512, (1.0, 2.0), 257)
    original = tmp_path / "orig.yaml"
    original.write_text(
        "DATA:\n  dataset: default\nTEST:\n  base_size: 720\n  test_h: 593\n  test_w: 593\n  scales: [1.0]\n"
    )
    cfg = load_config(original)
    assert (cfg.base_size, cfg.crop_h, cfg.crop_w, cfg.scales) == (720, 593, 593, (1.0,))
    bad = tmp_path / "bad.yaml"
    bad.write_text("base_size: 360\nscale: [1.0]\n")
    with pytest.raises(InputError, match=r"bad.yaml: key 'scale': unknown key, did you mean 'scales'\? \(known: "):
        load_config(bad)
    bad.write_text("TEST:\n  base_size: 360\n  test_h: big\n")
    with pytest.raises(InputError, match=r"^.*bad.yaml: key 'test_h': expected int, got 'big'$"):
        load_config(bad)
    bad.write_text("base_size: -1\n")
    with pytest.raises(InputError, match=r"^.*bad.yaml: key 'base_size': must be positive, got -1$"):
        load_config(bad)
    with pytest.raises(InputError, match="unknown inference preset '360'"):
        load_config("360")
    with pytest.raises(InputError, match=r"missing\.yaml: config file does not exist"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(InputError, match=r"^inference settings: key 'stride': unknown key \(known: base_size, "):
        load_config("360_ss", stride=3)
    with pytest.raises(InputError, match=r"^inference settings: key 'flip': expected bool, got 'no'$"):
        load_config("360_ss", flip="no")


def test_band_resize_equals_opencv_and_torch():
    torch.manual_seed(0)
    sizes = [(37, 53, 100, 80), (100, 80, 37, 53), (90, 160, 270, 480), (7, 5, 7, 5), (65, 65, 30, 47)]
    for h, w, out_h, out_w in sizes:
        maps = torch.rand(9, h, w)
        full = resize_rows(maps, out_h, out_w)
        np.testing.assert_allclose(full.numpy(), cv2_resize_chw(maps.numpy(), out_h, out_w), atol=1e-6)
        ref = F.interpolate(maps[None], size=(out_h, out_w), mode="bilinear", align_corners=False)[0]
        torch.testing.assert_close(full, ref, atol=1e-4, rtol=0)
        torch.testing.assert_close(resize_rows(maps, out_h, out_w, 3, 11), full[:, 3:11], atol=0, rtol=0)


# ---------------------------------------------------------------------------- a per-pixel model: exact answers
class PixelModel(nn.Module):
    """Logits are a fixed linear function of each pixel: windows, padding and flips cannot change them."""

    def __init__(self, num_classes: int, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.num_classes = num_classes
        self.conv = nn.Conv2d(3, num_classes, 1)
        nn.init.normal_(self.conv.weight, std=2.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def pixel_probs(model: PixelModel, image: np.ndarray) -> np.ndarray:
    x = torch.from_numpy(image.transpose(2, 0, 1).copy()).float()
    x = (x - torch.tensor(MEAN_RGB).view(3, 1, 1)) / torch.tensor(STD_RGB).view(3, 1, 1)
    with torch.no_grad():
        return model(x[None])[0].softmax(0).numpy()


@pytest.mark.parametrize(
    ("h", "w", "base", "scales", "crop"),
    [
        (30, 45, 30, (1.0,), 65),  # one window, image smaller than the crop (padding)
        (60, 100, 60, (1.0,), 33),  # several overlapping windows, landscape
        (100, 60, 60, (1.0,), 33),  # portrait
        (48, 64, 40, (0.5, 1.0, 1.75), 33),  # multi-scale: each scale resized back, then averaged
    ],
)
def test_pixel_model_matches_direct_computation(h, w, base, scales, crop):
    model = PixelModel(11)
    image = random_image(h, w)
    cfg = InferenceConfig(base_size=base, scales=scales, crop_h=crop, crop_w=crop)
    seg = Segmenter(model, config=cfg, model_taxonomy="camvid-11")
    expected = np.zeros((11, h, w), np.float64)
    for s in scales:
        resized = resize_short_side(image.astype(np.float32), round(s * base))
        expected += cv2_resize_chw(pixel_probs(model, resized), h, w)
    expected /= len(scales)
    got = seg.predict_proba(image)
    assert got.shape == (11, h, w) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-5)
    # The reference itself, on the same exact answer: the tests below compare the Segmenter with something right.
    np.testing.assert_allclose(reference_predict_proba(model, image, base, scales, crop), expected, atol=1e-5)
    labels = seg.predict(image)
    assert labels.dtype == np.uint8 and (labels == got.argmax(0)).all()


def test_batched_preset_matches_direct_computation():
    model = PixelModel(11)
    image = random_image(90, 160)
    seg = Segmenter(model, config="batched_480", model_taxonomy="camvid-11", crop_size=65)
    base = math.floor(90 * 65 / 160)  # 36
    resized = cv2.resize(image.astype(np.float32), (int(160 * base / 90), base), interpolation=cv2.INTER_LINEAR)
    probs = torch.from_numpy(pixel_probs(model, resized))[None]
    expected = F.interpolate(probs, size=(90, 160), mode="bilinear", align_corners=True)[0].numpy()
    np.testing.assert_allclose(seg.predict_proba(image), expected, atol=1e-5)


# ---------------------------------------------------------------------------- a real (tiny) HRNet
@pytest.mark.parametrize(
    ("h", "w", "base", "scales", "crop"),
    [
        (40, 60, 40, (1.0,), 65),
        (70, 110, 70, (1.0,), 49),
        (110, 70, 64, (0.5, 1.25), 49),
        (70, 110, 60, (1.0, 0.75), (41, 65)),  # a crop that is not square
    ],
)
def test_tiny_hrnet_matches_the_literal_algorithm(h, w, base, scales, crop):
    model = tiny_hrnet(194)
    image = random_image(h, w, seed=3)
    seg = Segmenter(model, config="360_ms", base_size=base, scales=scales, crop_size=crop)
    expected = reference_predict_proba(model, image, base, scales, crop)
    got = seg.predict_proba(image)
    np.testing.assert_allclose(got, expected, atol=2e-6)
    gap = np.sort(expected, axis=0)
    decided = (gap[-1] - gap[-2]) > 1e-5
    assert (seg.predict(image)[decided] == expected.argmax(0)[decided]).all()


def test_test_taxonomy_output_is_projected_before_averaging():
    model = tiny_hrnet(194)
    image = random_image(50, 70, seed=5)
    seg = Segmenter(model, config="360_ms", base_size=50, scales=(1.0, 1.5), crop_size=49, output_taxonomy="camvid-11")
    matrix = TaxonomyConverter().universal_to_test_matrix("camvid-11")
    expected = reference_predict_proba(model, image, 50, (1.0, 1.5), 49, projection=matrix)
    np.testing.assert_allclose(seg.predict_proba(image), expected, atol=2e-6)
    universal = Segmenter(model, config="360_ms", base_size=50, scales=(1.0, 1.5), crop_size=49).predict_proba(image)
    np.testing.assert_allclose(seg.predict_proba(image), np.einsum("tc,chw->thw", matrix, universal), atol=1e-5)
    assert seg.class_names[10] == "Bicyclist" and seg.num_classes == 11


def test_pspnet_matches_the_literal_algorithm():
    # PSPNet stops before its final resize (stride 8) as HRNet does (stride 4).
    torch.manual_seed(0)
    model = build_model("pspnet50", 11)
    with torch.no_grad():
        model(torch.randn(2, 3, 49, 49) * 50)  # BN statistics that normalise something
    model.eval()
    image = random_image(50, 80, seed=6)
    seg = Segmenter(model, config="360_ss", base_size=50, crop_size=49, model_taxonomy="camvid-11")
    assert seg.network.early_exit
    np.testing.assert_allclose(seg.predict_proba(image), reference_predict_proba(model, image, 50, (1.0,), 49),
                               atol=2e-6)  # fmt: skip


def test_naive_model_outputs_uint16_labels_and_maps_to_test():
    model = PixelModel(316)
    seg = Segmenter(model, config="360_ss", base_size=20, crop_size=33, model_taxonomy="naive")
    labels = seg.predict(random_image(20, 30))
    assert labels.dtype == np.uint16 and labels.shape == (20, 30)
    camvid = Segmenter(model, config="360_ss", base_size=20, crop_size=33, model_taxonomy="naive",
                       output_taxonomy="camvid-11")  # fmt: skip
    assert camvid.predict(random_image(20, 30)).max() < 11


def test_inputs_path_pil_and_grey(tmp_path):
    model = PixelModel(11)
    seg = Segmenter(model, config="360_ss", base_size=20, crop_size=33, model_taxonomy="camvid-11")
    image = random_image(20, 30)
    path = tmp_path / "x.png"
    cv2.imwrite(str(path), image[:, :, ::-1])
    from_array = seg.predict(image)
    assert (seg.predict(path) == from_array).all() and (seg.predict(str(path)) == from_array).all()
    PIL = pytest.importorskip("PIL.Image")
    assert (seg.predict(PIL.fromarray(image)) == from_array).all()
    assert seg.predict(image[:, :, 0]).shape == (20, 30)


def test_pil_images_of_every_mode_get_the_path_readers_pixels(tmp_path):
    """A PIL image gives the pixels of the same file read by path: 16-bit modes scaled, not clipped to white."""
    from PIL import Image

    from mseg_semantic.fileio import read_image
    from mseg_semantic.inference.images import as_rgb_array

    rng = np.random.default_rng(0)
    grey16 = rng.integers(0, 65536, size=(24, 32), dtype=np.uint16)
    path = tmp_path / "grey16.png"
    cv2.imwrite(str(path), grey16)
    opened = Image.open(path)
    assert opened.mode.startswith("I")  # I;16 (or I, in older Pillow)
    expected = read_image(path)
    assert np.array_equal(as_rgb_array(opened), expected) and 0 < expected.mean() < 250
    assert np.array_equal(as_rgb_array(Image.fromarray(grey16.astype(np.int32), mode="I")), expected)
    rgb = random_image(24, 32)
    for mode in ("1", "L", "P", "LA", "RGBA", "RGB"):
        image = Image.fromarray(rgb).convert(mode)
        image.save(tmp_path / f"{mode}.png")
        assert np.array_equal(as_rgb_array(image), read_image(tmp_path / f"{mode}.png")), mode
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    cmyk = as_rgb_array(Image.open(tmp_path / "cmyk.jpg")).astype(int)
    assert np.abs(cmyk - read_image(tmp_path / "cmyk.jpg")).max() <= 1  # PIL's and libjpeg's CMYK conversions
    with pytest.raises(InputError, match=r"mode F .* convert it to 8-bit RGB"):
        as_rgb_array(Image.fromarray(grey16.astype(np.float32)))
    with pytest.raises(InputError, match=r"outside 0\.\.65535"):
        as_rgb_array(Image.fromarray(np.full((4, 4), 70000, np.int32), mode="I"))
    seg = Segmenter(PixelModel(11), config="360_ss", base_size=20, crop_size=33, model_taxonomy="camvid-11")
    assert np.array_equal(seg.predict(Image.open(path)), seg.predict(path))


def test_errors_are_clear(tmp_path):
    with pytest.raises(TaxonomyError, match="11 output classes but taxonomy 'universal' has 194"):
        Segmenter(PixelModel(11), config="360_ss")
    with pytest.raises(TaxonomyError, match="can only output its own taxonomy"):
        Segmenter(PixelModel(11), config="360_ss", model_taxonomy="camvid-11", output_taxonomy="kitti-19")
    with pytest.raises(TaxonomyError, match="test taxonomies"):
        Segmenter(PixelModel(194), config="360_ss", output_taxonomy="ade20k-150")
    seg = Segmenter(PixelModel(11), config="360_ss", model_taxonomy="camvid-11", base_size=20, crop_size=33)
    with pytest.raises(InputError, match="uint8"):
        seg.predict(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(InputError, match="shape"):
        seg.predict(np.zeros((4, 4, 5), np.uint8))
    with pytest.raises(InputError, match="no such file"):
        seg.predict(tmp_path / "missing.jpg")
    (tmp_path / "bad.jpg").write_bytes(b"<html>")
    with pytest.raises(InputError, match=r"bad\.jpg: not a readable image"):
        seg.predict(tmp_path / "bad.jpg")


def test_segmenter_takes_taxonomy_and_preset_from_the_model():
    model = PixelModel(11)
    model.taxonomy, model.preset = "camvid-11", "360_ss"
    seg = Segmenter(model, base_size=20, crop_size=33)
    assert (seg.model_taxonomy, seg.output_taxonomy, seg.config.name) == ("camvid-11", "camvid-11", "360_ss+custom")
    assert seg.config.base_size == 20 and seg.config.scales == (1.0,)  # 360_ss with the overrides
    explicit = Segmenter(model, config="720_ms", model_taxonomy="camvid-11")
    assert explicit.config.name == "720_ms"
    plain = Segmenter(PixelModel(194))  # a module that carries nothing: universal, the original demo preset
    assert (plain.model_taxonomy, plain.config.name) == ("universal", "360_ms")


def test_segmenter_reads_the_taxonomy_from_a_safetensors_file(tmp_path):
    """Issue #15: `Segmenter(load_model("x.safetensors"))` with the taxonomy read from the file."""
    from mseg_semantic import load_model
    from mseg_semantic.models import save_checkpoint

    path = save_checkpoint(tiny_hrnet(19), tmp_path / "x.safetensors", taxonomy="kitti-19")
    for seg in (Segmenter(load_model(path), config="360_ss", base_size=32, crop_size=33), Segmenter(path)):
        assert seg.model_taxonomy == seg.output_taxonomy == "kitti-19" and seg.num_classes == 19
    assert Segmenter(path, config="360_ss", base_size=32, crop_size=33).predict(random_image(24, 30)).shape == (24, 30)
    unknown = save_checkpoint(tiny_hrnet(19), tmp_path / "y.safetensors")  # 19 classes: which taxonomy?
    with pytest.raises(TaxonomyError, match="pass the model's taxonomy"):
        Segmenter(load_model(unknown))
    assert Segmenter(load_model(unknown), model_taxonomy="wilddash-19").model_taxonomy == "wilddash-19"
