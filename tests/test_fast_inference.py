"""Fast inference: the speed-up settings, their agreement with the faithful path on real images, the faithful
path's own restructuring (same numbers), and background I/O in the demo (same files)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import example_frame, tiny_hrnet
from test_inference import PixelModel, random_image
from torch import nn

from mseg_semantic import InputError
from mseg_semantic.cli import main
from mseg_semantic.examples import example_path
from mseg_semantic.fileio import read_image, read_label
from mseg_semantic.inference import Segmenter, load_config, run_demo
from mseg_semantic.inference import segmenter as segmenter_module
from mseg_semantic.inference.background import WriteBehind, read_ahead
from mseg_semantic.inference.config import FAST
from mseg_semantic.inference.network import (
    Network,
    cpu_has_native_bf16,
    folded_copy,
    low_precision_copy,
    resolve_precision,
)
from mseg_semantic.inference.reference import reference_predict_proba
from mseg_semantic.inference.runtimes import available
from mseg_semantic.inference.windows import PAD_PHASE, window_grid
from mseg_semantic.models import build_model
from mseg_semantic.models.hrnet import HRNet
from mseg_semantic.normalization import normalize
from mseg_semantic.resizing import resize_short_side
from mseg_semantic.taxonomy import class_names, get_taxonomy

# Small versions of the real geometry: a short side of 96 in a 161 crop puts 32 rows of padding above the image,
# as 360 in 713 puts 176, so pad="minimal" and max_window really change the windows.
SMALL = {"config": "360_ss", "base_size": 96, "crop_size": 161}


# ---------------------------------------------------------------------------- a tiny HRNet that predicts something
def _normalised(image: np.ndarray) -> torch.Tensor:
    return normalize(torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))))


@pytest.fixture(scope="module")
def probe_model(example_photos: Path) -> HRNet:
    """The tiny HRNet with BN statistics of three street photos (the bundled examples') and its classifier fitted to
    the bundled CamVid model's labels for them.

    A randomly initialised network predicts near-uniform probabilities, where any rounding flips the argmax; this
    one predicts several CamVid classes with top-1 probabilities around 0.5, so agreement figures mean something.
    """
    from mseg_semantic import load_model

    model = tiny_hrnet(194)
    names = ["street.jpg", "street_mirrored.jpg", "freeway.png"]
    images = [cv2.resize(read_image(example_photos / n), (240, 180), interpolation=cv2.INTER_AREA) for n in names]
    teacher = Segmenter(load_model())  # camvid11-compact, bundled with the package
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None
    model.train()
    with torch.no_grad():
        model(torch.stack([_normalised(i.astype(np.float32)) for i in images]))
    model.eval()
    universal = class_names("universal")
    to_universal = np.full(256, 255, np.int64)
    for index, targets in enumerate(get_taxonomy("camvid-11").universal):
        to_universal[index] = universal.index(targets[0])
    captured = {}
    hook = model.last_layer[2].register_forward_hook(lambda m, i, o: captured.__setitem__("x", o))
    features, labels = [], []
    with torch.no_grad():
        for image in images:
            model(_normalised(image.astype(np.float32))[None])
            feats = captured["x"][0]
            label = teacher.predict(image)
            label = to_universal[cv2.resize(label, feats.shape[:0:-1], interpolation=cv2.INTER_NEAREST)].ravel()
            keep = label != 255
            features.append(feats.reshape(feats.shape[0], -1).T[torch.from_numpy(keep)])
            labels.append(torch.from_numpy(label[keep]))
    hook.remove()
    x, y = torch.cat(features), torch.cat(labels)
    weight = torch.zeros(194, x.shape[1], requires_grad=True)
    bias = torch.zeros(194, requires_grad=True)
    optimizer = torch.optim.Adam([weight, bias], lr=0.05)
    for _ in range(150):
        loss = torch.nn.functional.cross_entropy(x @ weight.T + bias, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        model.last_layer[3].weight.copy_(weight[:, :, None, None])
        model.last_layer[3].bias.copy_(bias)
    return model


@pytest.fixture(scope="module")
def real_images(example_photos: Path) -> list[np.ndarray]:
    """A 640x480 street photo (the bundled dashcam one, resized) and a 480x270 frame of the bundled clip that the
    probe model was not fitted to."""
    frame = cv2.resize(example_frame(5), (480, 270), interpolation=cv2.INTER_AREA)
    return [read_image(example_photos / "street.jpg"), frame]


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    return 100.0 * float((a == b).mean())


# ---------------------------------------------------------------------------- settings
def test_fast_switch_turns_on_every_speed_up_and_explicit_values_win():
    cfg = load_config("360_ss", fast=True)
    assert {k: getattr(cfg, k) for k in FAST} == FAST and cfg.name == "360_ss+fast" and not cfg.faithful
    assert load_config("360_ss").faithful and load_config("360_ss", batch_windows=4).faithful
    cfg = load_config("360_ms", fast=True, precision="fp32", scales=[1.0])
    assert cfg.precision == "fp32" and cfg.head == FAST["head"] and cfg.scales == (1.0,)
    seg = Segmenter(PixelModel(11), config="360_ss", model_taxonomy="camvid-11", fast=True, head="full")
    assert seg.config.head == "full" and seg.config.channels_last
    assert seg.precision == ("bf16" if cpu_has_native_bf16() else "fp32")


def test_speed_settings_are_validated(tmp_path):
    for key, value in [("precision", "fp64"), ("pad", "none"), ("head", "half"), ("batch_windows", 0)]:
        with pytest.raises(InputError, match=key):
            load_config("360_ss", **{key: value})
    with pytest.raises(InputError, match="key 'max_window': needs pad='minimal'"):
        load_config("360_ss", max_window=1025)
    path = tmp_path / "quick.yaml"
    path.write_text("base_size: 360\nscales: [1.0]\nfast: true\nprecision: fp32\n")
    cfg = load_config(path)
    assert cfg.head == "low_res" and cfg.precision == "fp32"


def test_auto_precision_follows_the_device():
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == ("bf16" if cpu_has_native_bf16() else "fp32")
    assert resolve_precision("fp16", cpu) == "fp16" and resolve_precision("fp32", cpu) == "fp32"
    # /proc/cpuinfo is read once per process (training and every Segmenter ask); resolve_precision is plain.
    assert cpu_has_native_bf16.cache_info().currsize == 1 and not hasattr(resolve_precision, "cache_info")


def test_minimal_padding_keeps_the_stride_32_alignment():
    # The original: 360 rows centred in 713 (176 above); minimal: 16 above (176 mod 32), 393 in all (713 mod 32).
    faithful, minimal = window_grid(360, 713, 713, 713), window_grid(360, 713, 713, 713, "minimal")
    assert (faithful.win_h, faithful.ys) == (713, (-176,)) and (minimal.win_h, minimal.ys) == (393, (-16,))
    for h, w in [(180, 356), (270, 535), (630, 1247), (500, 990), (1080, 1920), (713, 713), (5, 700)]:
        f, m = window_grid(h, w, 713, 713), window_grid(h, w, 713, 713, "minimal", max_window=2049)
        for fs, ms, fw, mw, size in [(f.ys, m.ys, f.win_h, m.win_h, h), (f.xs, m.xs, f.win_w, m.win_w, w)]:
            assert (fs[0] - ms[0]) % PAD_PHASE == 0 and (fw - mw) % PAD_PHASE == 0
            assert mw <= max(fw, size + PAD_PHASE) and ms[0] <= 0 and ms[-1] + mw >= size
    whole = window_grid(1080, 1920, 713, 713, "minimal", max_window=2049)
    assert (whole.win_h, whole.win_w, whole.ys, whole.xs) == (1097, 1929, (0,), (0,))
    tiles = window_grid(1080, 1920, 713, 713, "minimal", max_window=1200)
    assert tiles.win_w == 1193 and tiles.xs == (0, 727)  # 1193 = 713 + 15 * 32; stride ceil(2/3 * 1193)


# ---------------------------------------------------------------------------- agreement on real images
@pytest.mark.parametrize(
    ("settings", "threshold"),
    [
        ({"precision": "bf16"}, 95.0),
        ({"precision": "fp16"}, 95.0),
        ({"channels_last": True}, 99.5),
        ({"head": "low_res"}, 95.0),
        ({"batch_windows": 3}, 99.9),
        pytest.param({"fast": True}, 95.0, marks=pytest.mark.slow),  # all of the above at once
    ],
)
def test_speed_ups_agree_with_the_faithful_path_on_real_images(probe_model, real_images, settings, threshold):
    # Thresholds fit this tiny, barely trained network (its top-1 probability is about 0.5, so rounding flips more
    # labels than with a trained W48; see benchmarks/inference.py for those figures). The same check applied to
    # a result misaligned by 3 pixels, or left mirrored, fails: it can catch an offset or flip bug.
    for image in real_images:
        faithful = Segmenter(probe_model, **SMALL).predict(image)
        assert len(np.unique(faithful)) >= 4  # not a one-class map that anything would agree with
        labels = Segmenter(probe_model, **SMALL, **settings).predict(image)
        assert labels.shape == faithful.shape and labels.dtype == np.uint8
        assert agreement(labels, faithful) >= threshold, settings
        shifted = Segmenter(probe_model, **SMALL, **settings).predict(np.roll(image, 3, axis=1))
        assert agreement(np.roll(shifted, -3, axis=1), faithful) < threshold
        assert agreement(np.fliplr(labels), faithful) < threshold


def direct_window_proba(model, image: np.ndarray, short: int, canvas: tuple[int, int], top: int, left: int):
    """One window by hand: resize, place at (top, left) in a zero (mean) canvas, forward with the flip, crop back."""
    resized = resize_short_side(image.astype(np.float32), short)
    h, w = resized.shape[:2]
    x = torch.zeros(3, *canvas)
    x[:, top : top + h, left : left + w] = _normalised(resized)
    with torch.no_grad():
        probs = model(torch.stack([x, x.flip(-1)])).softmax(1)
    probs = ((probs[0] + probs[1].flip(-1)) / 2)[:, top : top + h, left : left + w].numpy()
    return np.stack([cv2.resize(c, image.shape[1::-1], interpolation=cv2.INTER_LINEAR) for c in probs])


def test_geometric_speed_ups_equal_a_direct_computation():
    # Minimal padding and whole-image windows change what the network sees, so their agreement is a property of the
    # network (measured in the benchmark); here the bookkeeping is checked exactly on one window of each kind.
    model = tiny_hrnet(194)
    image = cv2.resize(read_image(example_path("dashcam")), (480, 360), interpolation=cv2.INTER_AREA)  # CamVid's size
    # 96 x 128 in a 161 crop: the original pads 32 rows above and 16 columns left; minimal keeps 32 % 32 = 0 rows
    # and 16 columns, in a 97 x 161 window (sizes equal to the crop's modulo 32).
    seg = Segmenter(model, **SMALL, pad="minimal")
    assert [(g.win_h, g.win_w, g.ys, g.xs) for g in seg.window_grids(360, 480)] == [(97, 161, (0,), (-16,))]
    np.testing.assert_allclose(seg.predict_proba(image), direct_window_proba(model, image, 96, (97, 161), 0, 16),
                               atol=1e-5)  # fmt: skip
    # 224 x 299 with a 161 crop would slide 2 x 2 windows; max_window=320 runs it whole in 225 x 321 (161 + 32k).
    seg = Segmenter(model, config="360_ss", base_size=224, crop_size=161, pad="minimal", max_window=320)
    assert [(g.win_h, g.win_w, g.ys, g.xs) for g in seg.window_grids(360, 480)] == [(225, 321, (0,), (0,))]
    np.testing.assert_allclose(seg.predict_proba(image), direct_window_proba(model, image, 224, (225, 321), 0, 0),
                               atol=1e-5)  # fmt: skip


@pytest.mark.slow
def test_fast_path_outputs(probe_model, real_images):
    image = real_images[1]
    seg = Segmenter(probe_model, config="360_ms", base_size=96, crop_size=161, scales=(0.5, 1.0, 1.75), fast=True)
    probs = seg.predict_proba(image)
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-3)  # softmax outputs (kept in float16), averaged
    # predict() evaluates only a few candidate classes per band, with a bound on the others: the same labels.
    assert (seg.predict(image) == probs.argmax(0)).all()
    seg = Segmenter(probe_model, **SMALL, fast=True, output_taxonomy="camvid-11")
    probs = seg.predict_proba(image)
    assert probs.shape == (11, *image.shape[:2]) and probs.dtype == np.float32 and probs.max() <= 1 + 1e-5
    assert (seg.predict(image) == probs.argmax(0)).all()
    big = Segmenter(probe_model, config="360_ms", base_size=96, crop_size=161, fast=True, pad="minimal", max_window=257)
    assert big.predict(real_images[0]).shape == real_images[0].shape[:2]


def test_low_precision_copy_lets_the_fp32_model_go():
    """With a bf16 copy nothing of ours holds the fp32 model: the caller dropping it frees its weights at once, without
    waiting for the cyclic collector (no reference cycles: our models are copied without torch.fx tracing, and
    the cycles that tracing leaves for a caller's module are collected when its copy is made)."""
    import gc
    import weakref

    gc.collect()
    gc.disable()  # the release must not depend on when the cyclic collector happens to run
    try:
        model = tiny_hrnet(194)
        seg = Segmenter(model, **SMALL, precision="bf16")
        assert seg.network.early_exit and seg.model is not model
        alive = weakref.ref(model)
        del model
        assert alive() is None
        fp32 = tiny_hrnet(194)
        seg32 = Segmenter(fp32, **SMALL)
        assert seg32.model.get_submodule("conv1") is fp32.conv1  # fp32 runs the caller's own weights, no copy
    finally:
        gc.enable()
    image = random_image(80, 120, seed=5)
    assert seg.predict(image).shape == (80, 120)  # the copy runs on its own


# ---------------------------------------------------------------------------- the faithful path, restructured
def test_faithful_path_equals_the_literal_algorithm_with_batching_and_bands(monkeypatch):
    model = tiny_hrnet(194)
    image = random_image(90, 140, seed=7)
    expected = reference_predict_proba(model, image, 70, (0.5, 1.25), 49)  # several windows per scale, padding
    gap = np.sort(expected, axis=0)
    decided = (gap[-1] - gap[-2]) > 1e-5
    monkeypatch.setattr(segmenter_module, "_BAND_BYTES", 4 * 194 * 140 * 2 * 3)  # 3-row bands: exercise the cache
    for batch in (1, 3, 16):
        seg = Segmenter(model, config="360_ms", base_size=70, scales=(0.5, 1.25), crop_size=49, batch_windows=batch)
        assert seg.network.early_exit
        np.testing.assert_allclose(seg.predict_proba(image), expected, atol=1e-5)
        assert (seg.predict(image)[decided] == expected.argmax(0)[decided]).all()


def test_predict_batch_equals_predict():
    model = tiny_hrnet(194)
    images = [random_image(60, 90, seed=1), random_image(60, 90, seed=2), random_image(80, 50, seed=3)]
    seg = Segmenter(model, config="360_ms", base_size=40, scales=(1.0, 1.5), crop_size=49, batch_windows=5)
    batch = seg.predict_batch(images)
    for image, labels in zip(images, batch, strict=True):
        single = seg.predict(image)
        assert labels.shape == image.shape[:2] and (labels == single).mean() > 0.999


class DoubledHRNet(HRNet):
    """An HRNet whose forward does more after its head: the early exit must notice and not be used."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * super().forward(x)


class HalvedLowResHRNet(HRNet):
    """An HRNet that takes ``resize`` but returns something else without it: the check must notice."""

    def forward(self, x: torch.Tensor, resize: bool = True) -> torch.Tensor:
        out = super().forward(x, resize)
        return out if resize else out / 2


def test_early_exit_is_verified_numerically():
    model = tiny_hrnet(11)
    assert Network(model, torch.device("cpu")).early_exit
    doubled = DoubledHRNet(model.config, 11)
    doubled.load_state_dict(model.state_dict())
    doubled.eval()
    assert not Network(doubled, torch.device("cpu")).early_exit
    halved = HalvedLowResHRNet(model.config, 11)
    halved.load_state_dict(model.state_dict())
    assert not Network(halved.eval(), torch.device("cpu")).early_exit
    image = random_image(40, 60, seed=4)
    seg = Segmenter(doubled, config="360_ss", base_size=40, crop_size=49, model_taxonomy="camvid-11")
    np.testing.assert_allclose(seg.predict_proba(image), reference_predict_proba(doubled, image, 40, (1.0,), 49),
                               atol=2e-6)  # fmt: skip


class CallersModel(nn.Module):
    """A module of the caller's that ends with the original's resize: torch.fx cuts it off (ours need no tracing)."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, num_classes, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(self.conv(x), size=x.shape[-2:], mode="bilinear", align_corners=True)


def test_a_callers_module_has_its_final_resize_cut_with_torch_fx():
    model = CallersModel(11).eval()
    image = random_image(40, 60, seed=8)
    seg = Segmenter(model, config="360_ss", base_size=40, crop_size=49, model_taxonomy="camvid-11")
    assert seg.network.early_exit and isinstance(seg.model, torch.fx.GraphModule)
    np.testing.assert_allclose(seg.predict_proba(image), reference_predict_proba(model, image, 40, (1.0,), 49),
                               atol=2e-6)  # fmt: skip


def test_our_models_stop_early_and_fold_without_torch_fx(monkeypatch):
    """HRNet and PSPNet skip their final resize themselves (``forward(x, resize=False)``) and name their (conv, BN)
    pairs, so a Segmenter never traces them; the bf16 copy computes exactly what the traced one did."""
    model = tiny_hrnet(194)
    x = torch.randn(2, 3, 49, 65, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():  # the way it was done: traced, then folded in the graph
        graph = torch.fx.symbolic_trace(model, concrete_args={"resize": False})
        traced = low_precision_copy(graph, torch.bfloat16)(x.to(torch.bfloat16), False)

    def no_tracing(*args, **kwargs):
        raise AssertionError("torch.fx used on one of our models")

    monkeypatch.setattr(torch.fx, "symbolic_trace", no_tracing)
    fp32 = Segmenter(model, **SMALL, precision="fp32")
    assert fp32.network.early_exit and fp32.model is model
    bf16 = Segmenter(model, **SMALL, precision="bf16", channels_last=True)
    assert bf16.network.early_exit and type(bf16.model) is HRNet
    assert not any(isinstance(m, nn.BatchNorm2d) for m in bf16.model.modules())
    assert {p.dtype for p in bf16.model.parameters()} == {torch.bfloat16}
    assert torch.equal(bf16.network(x), traced)
    psp = build_model("pspnet50", 11).eval()
    assert Network(psp, torch.device("cpu"), "bf16").early_exit
    # zoom_factor 4 resizes to half the input size, which the caller resizes again: no early exit.
    psp.config = type(psp.config)(zoom_factor=4)
    assert not Network(psp, torch.device("cpu")).early_exit


def test_folded_copy_computes_what_the_model_computes():
    torch.manual_seed(0)
    pspnet = build_model("pspnet50", 11)
    with torch.no_grad():
        pspnet(torch.randn(2, 3, 49, 49) * 50)
    for model in (tiny_hrnet(11), pspnet.eval()):
        folded = folded_copy(model, model.conv_bn_pairs(), torch.float32)
        originals = {t.data_ptr() for t in (*model.parameters(), *model.buffers())}
        assert not originals & {t.data_ptr() for t in (*folded.parameters(), *folded.buffers())}
        x = torch.randn(1, 3, 37, 50, generator=torch.Generator().manual_seed(2))
        with torch.inference_mode():
            expected = model(x, resize=False)
            torch.testing.assert_close(folded(x, resize=False), expected, rtol=1e-4, atol=1e-4 * expected.abs().max())
        assert model.training is False and any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


# ---------------------------------------------------------------------------- background I/O
def test_read_ahead_and_write_behind_keep_order_and_report_errors():
    def read(i: int) -> int:
        if i == 3:
            raise InputError("item 3 is broken")
        return i * i

    for threaded in (True, False):
        got = [(i, r, str(e) if e else None) for i, r, e in read_ahead(read, range(6), depth=2, threaded=threaded)]
        assert got == [(0, 0, None), (1, 1, None), (2, 4, None), (3, None, "item 3 is broken"), (4, 16, None),
                       (5, 25, None)]  # fmt: skip
        before = threading.active_count()
        for i, _, _ in read_ahead(read, range(1000), threaded=threaded):
            if i == 2:
                break
        assert threading.active_count() == before  # leaving early stops the reader
        assert write_all(threaded) == [-5, -10, ZeroDivisionError, 10, 5]
    # Several writers: tasks run concurrently (later ones finish first), results still come in order.
    assert write_all(True, workers=3) == [-5, -10, ZeroDivisionError, 10, 5]
    running, peak = [0], [0]
    lock = threading.Lock()

    def task(i: int) -> int:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.02)
        with lock:
            running[0] -= 1
        return i

    done: list = []
    with WriteBehind(depth=2, workers=3) as writer:
        for i in range(12):
            writer.submit(lambda i=i: task(i), lambda r, e: done.append(r))
            assert len(writer._pending) <= 5  # bounded: depth + workers
    assert done == list(range(12)) and peak[0] == 3


def write_all(threaded: bool, workers: int = 1) -> list:
    done: list = []
    with WriteBehind(depth=1, threaded=threaded, workers=workers) as writer:
        for i in range(5):

            def task(i: int = i) -> int:
                time.sleep(0.01 * (5 - i) * (workers > 1))  # with several writers, the first tasks finish last
                return 10 // (i - 2)

            writer.submit(task, lambda r, e: done.append(r if e is None else type(e)))
    return done


@pytest.mark.slow  # three demo runs over images and a video
def test_background_io_writes_the_same_files(example_photos, tiny_checkpoint, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for name in ("street.jpg", "street_wide.png"):
        (src / name).write_bytes((example_photos / name).read_bytes())
    (src / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    (src / "clip.mp4").write_bytes(example_path("freeway").read_bytes())
    seg = Segmenter(tiny_checkpoint, config="360_ss", base_size=64, crop_size=97, batch_windows=2)
    reports = {}
    for mode, workers in ((False, 1), (True, 1), (True, 3)):
        reports[mode, workers] = run_demo(seg, [src], tmp_path / f"{mode}{workers}", max_frames=3, save_frames=True,
                                          progress=False, log=lambda m: None, background_io=mode,
                                          io_workers=workers)  # fmt: skip
    inline = reports[False, 1]
    for report in reports.values():
        assert report.images == 2 and report.frames == 3
        assert report.failures == inline.failures and "broken.jpg" in report.failures[0]
    files = sorted(p.relative_to(tmp_path / "False1") for p in (tmp_path / "False1").rglob("*")
                   if p.is_file() and p.name != ".mseg-demo.lock")  # fmt: skip
    assert len(files) == 2 * 3 + 1 + 3 + 1  # and the manifest
    for name in files:
        a, b, c = (tmp_path / mode / name for mode in ("False1", "True1", "True3"))
        if name.name == "manifest.jsonl":  # the same lines but for the seconds they took and when they finished
            lines = [sorted((json.loads(line) | {"seconds": 0, "finished": 0} for line in m.read_text().splitlines()),
                            key=lambda r: r["name"]) for m in (a, b, c)]  # fmt: skip
            assert lines[0] == lines[1] == lines[2] and len(lines[0]) == 4
        elif name.suffix == ".mp4":
            ca, cb, cc = cv2.VideoCapture(str(a)), cv2.VideoCapture(str(b)), cv2.VideoCapture(str(c))
            for _ in range(3):
                frame = ca.read()[1]
                assert (frame == cb.read()[1]).all() and (frame == cc.read()[1]).all()
        else:
            assert a.read_bytes() == b.read_bytes() == c.read_bytes(), name


@pytest.mark.slow
def test_demo_fast_flags(example_photos, tiny_checkpoint, tmp_path, capsys):
    image = str(example_photos / "street.jpg")
    small = ["--config", "360_ss", "--base-size", "64", "--crop-size", "97", "--quiet", "--out", str(tmp_path)]
    code = main(["demo", image, "--model", str(tiny_checkpoint), *small, "--fast", "--precision", "fp32"])
    out, err = capsys.readouterr()
    assert code == 0, err
    backend = "openvino" if available("openvino") else "torch" if cpu_has_native_bf16() else "onnxruntime"
    assert f"settings: 360_ss+fast, {backend} fp32" in err and "1 image(s)" in out
    assert read_label(tmp_path / "street_gray.png").shape == (480, 640)
    code = main(["demo", image, "--model", str(tiny_checkpoint), *small, "--max-window", "500"])
    err = capsys.readouterr().err
    assert code == 2 and "key 'max_window': needs pad='minimal'" in err and "Traceback" not in err


def test_demo_threads_option(example_photos, tiny_checkpoint, tmp_path, capsys):
    image = str(example_photos / "street.jpg")
    small = ["--config", "360_ss", "--base-size", "64", "--crop-size", "97", "--quiet", "--out", str(tmp_path)]
    before = torch.get_num_threads()
    try:
        code = main(["demo", image, "--model", str(tiny_checkpoint), *small, "--threads", "2"])
        assert code == 0, capsys.readouterr().err
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    code = main(["demo", image, "--model", str(tiny_checkpoint), *small, "--threads", "0", "--overwrite"])
    err = capsys.readouterr().err
    assert code == 2 and "--threads must be at least 1, got 0" in err and "Traceback" not in err


@pytest.mark.slow
def test_compiled_network_gives_the_eager_labels(example_photos):
    """compile=True runs the same network through torch.compile: the same labels (one window shape, compiled once;
    about a minute of inductor compilation on 2 cores the first time, cached by PyTorch afterwards)."""
    image = read_image(example_photos / "street.jpg")[::4, ::4].copy()
    model = tiny_hrnet(11)
    eager = Segmenter(model, model_taxonomy="camvid-11", config="360_ss", base_size=64, crop_size=97, flip=False)
    compiled = Segmenter(model, model_taxonomy="camvid-11", config="360_ss", base_size=64, crop_size=97, flip=False,
                         compile=True)  # fmt: skip
    assert not compiled.config.faithful and eager.config.faithful
    a, b = eager.predict_proba(image), compiled.predict_proba(image)
    assert np.abs(a - b).max() < 1e-4
    assert (a.argmax(0) == b.argmax(0)).mean() > 0.999
