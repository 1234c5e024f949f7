"""The parts of ``mseg serve`` one at a time, in this process: the batcher (real threads, a real event loop), the
result store, the image-size check before decoding, and the command line's checks before anything starts."""

from __future__ import annotations

import asyncio
import io
import socket
import struct
import sys
import threading
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from mseg_semantic.cli import main
from mseg_semantic.errors import InputError, TooLargeError
from mseg_semantic.examples import example_path
from mseg_semantic.fileio import decode_image, image_size
from mseg_semantic.serve.batcher import Batcher, QueueFullError
from mseg_semantic.serve.store import ResultStore, StoredOutput


def png_header(width: int, height: int) -> bytes:
    """A PNG that is only a header claiming ``width`` x ``height`` (no pixel data): a decompression bomb's shape."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IEND", b"")
    )


# ---------------------------------------------------------------------------- the batcher
class Recorder:
    """A ``run`` that records its batches; it can be held (so that jobs pile up) and fail on a payload."""

    def __init__(self) -> None:
        self.batches: list[list] = []
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, payloads):
        self.gate.wait(10)
        self.batches.append(list(payloads))
        return [ValueError("bad") if p == "bad" else p * 10 for p in payloads]


def test_jobs_of_one_key_share_a_batch_and_keys_do_not_mix():
    recorder = Recorder()
    batcher = Batcher(recorder, max_batch=3, max_wait=0.05, max_queue=16)

    async def main_():
        recorder.gate.clear()  # the first job runs alone and holds the worker while the others queue
        first = asyncio.ensure_future(batcher.submit("a", 0))
        await asyncio.sleep(0.1)
        rest = [
            asyncio.ensure_future(batcher.submit(key, value))
            for key, value in [("a", 1), ("b", 2), ("a", 3), ("a", 4), ("a", 5), ("b", 6)]
        ]
        await asyncio.sleep(0.05)
        recorder.gate.set()
        return await asyncio.gather(first, *rest)

    try:
        assert asyncio.run(main_()) == [0, 10, 20, 30, 40, 50, 60]
    finally:
        batcher.close()
    # In arrival order, each batch one key and at most max_batch jobs.
    assert recorder.batches == [[0], [1, 3, 4], [2, 6], [5]]
    assert batcher.stats.largest == 3 and batcher.stats.items == 7


def test_an_error_reaches_its_caller_only_and_the_worker_goes_on():
    recorder = Recorder()
    batcher = Batcher(recorder, max_batch=4, max_wait=0.05)

    async def main_():
        return await asyncio.gather(batcher.submit("k", 1), batcher.submit("k", "bad"), return_exceptions=True)

    try:
        good, bad = asyncio.run(main_())
        assert good == 10 and isinstance(bad, ValueError)
        assert asyncio.run(batcher.submit("k", 2)) == 20
    finally:
        batcher.close()


def test_a_full_queue_refuses_with_retry_after_and_a_released_slot_frees_it():
    batcher = Batcher(Recorder(), max_queue=2)
    try:
        first, second = batcher.acquire(), batcher.acquire()
        with pytest.raises(QueueFullError, match="busy: 2 requests queued") as refused:
            batcher.acquire()
        assert refused.value.retry_after >= 1
        first.release()
        first.release()  # twice is once
        assert batcher.queued == 1
        batcher.acquire()
        second.release()
    finally:
        batcher.close()


def test_a_caller_that_gives_up_leaves_the_queue_before_its_turn():
    recorder = Recorder()
    batcher = Batcher(recorder, max_batch=1, max_wait=0)

    async def main_():
        recorder.gate.clear()
        running = asyncio.ensure_future(batcher.submit("k", 1))
        await asyncio.sleep(0.1)
        gone = asyncio.ensure_future(batcher.submit("k", 2))
        await asyncio.sleep(0.05)
        gone.cancel()
        await asyncio.sleep(0.05)
        recorder.gate.set()
        return await running

    try:
        assert asyncio.run(main_()) == 10
        time.sleep(0.1)
    finally:
        batcher.close()
    assert recorder.batches == [[1]] and batcher.stats.cancelled == 1


# ---------------------------------------------------------------------------- the result store
def test_results_expire_and_the_store_stays_under_its_size():
    store = ResultStore(ttl=0.2, max_bytes=100)
    first = store.put({"gray": StoredOutput(b"x" * 60, "image/png")})
    assert store.get(first, "gray").data == b"x" * 60 and store.get(first, "overlay") is None
    second = store.put({"gray": StoredOutput(b"y" * 60, "image/png")})  # pushes the first out
    assert store.get(first, "gray") is None and store.get(second, "gray") is not None and store.size == 60
    time.sleep(0.25)
    assert store.get(second, "gray") is None and store.size == 0
    assert len({store.put({}) for _ in range(100)}) == 100  # ids do not repeat


# ---------------------------------------------------------------------------- sizes before pixels
def test_the_pixel_limit_is_checked_from_the_header_before_decoding():
    header = np.frombuffer(png_header(5000, 4000), dtype=np.uint8)
    assert image_size(header, "bomb.png") == (5000, 4000)
    with pytest.raises(TooLargeError, match=r"bomb.png: image of 5000x4000 = 20,000,000 pixels is over the limit"):
        decode_image(header, "bomb.png", max_pixels=1_000_000)
    with pytest.raises(TooLargeError, match="too large to decode safely"):
        image_size(png_header(100_000, 100_000), "huge.png")
    with pytest.raises(InputError, match=r"empty \(0 bytes\)"):
        image_size(b"", "empty")
    with pytest.raises(InputError, match="not a readable image"):
        image_size(b"GIF89a nonsense", "x.gif")
    data = example_path().read_bytes()
    assert decode_image(np.frombuffer(data, np.uint8), "dashcam", max_pixels=1164 * 874).shape == (874, 1164, 3)
    jpeg = io.BytesIO()
    Image.new("RGB", (40, 30)).save(jpeg, "JPEG")
    truncated = np.frombuffer(jpeg.getvalue()[: len(jpeg.getvalue()) // 2], np.uint8)
    with pytest.raises(InputError, match="truncated"):
        decode_image(truncated, "half.jpg", max_pixels=10_000)


# ---------------------------------------------------------------------------- the command line
def test_help_explains_every_option_with_examples(capsys):
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    text = capsys.readouterr().out
    for option in (
        "--model",
        "--preset",
        "--fast",
        "--host",
        "--port",
        "--max-batch",
        "--max-wait-ms",
        "--max-queue",
        "--max-pixels",
        "--max-body-mb",
        "--api-key",
        "MSEG_API_KEY",
        "examples:",
        "curl",
    ):
        assert option in text


def test_without_the_serve_extra_one_line_says_what_to_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "fastapi", None)  # import fastapi now fails, as without the extra
    assert main(["serve", "--port", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "mseg serve: error:" in err and 'pip install "mseg-semantic[serve]"' in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max-batch", "0"], "--max-batch must be at least 1"),
        (["--port", "70000"], "--port must lie in 0..65535"),
        (["--max-wait-ms", "-1"], "--max-wait-ms must be a number >= 0"),
        (["--preset", "nope"], "unknown inference preset"),
    ],
)
def test_bad_options_are_one_line_before_anything_loads(args, message, capsys):
    assert main(["serve", *args]) == 2
    assert message in capsys.readouterr().err


def test_a_port_in_use_is_one_clear_line(capsys):
    pytest.importorskip("uvicorn", reason="needs the serve extra (pip install -e '.[serve]')")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--port", str(port)]) == 2
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err


def test_a_model_that_cannot_load_stops_the_server_with_one_line(tmp_path, capsys):
    pytest.importorskip("uvicorn", reason="needs the serve extra (pip install -e '.[serve]')")
    missing = tmp_path / "missing.safetensors"
    assert main(["serve", "--port", "0", "--model", str(missing)]) == 2  # checked before the server starts
    assert capsys.readouterr().err.strip() == f"mseg serve: error: {missing}: checkpoint file does not exist"
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"not a checkpoint" * 10)
    assert main(["serve", "--port", "0", "--model", str(corrupt)]) == 2  # found when it loads, after the start
    err = capsys.readouterr().err
    assert "mseg serve: http://127.0.0.1:" in err  # it did start, then stopped
    assert f"mseg serve: error: the model could not be loaded: {corrupt}" in err


def test_a_universal_model_answers_in_a_test_taxonomy_like_the_segmenter():
    """The engine's Segmenter per output taxonomy: a universal model's answer in camvid-11 is the Segmenter's."""
    pytest.importorskip("fastapi", reason="needs the serve extra: pip install -e '.[serve]'")
    import torch
    from conftest import tiny_hrnet

    from mseg_semantic import Segmenter
    from mseg_semantic.inference.config import load_config
    from mseg_semantic.serve.engine import Engine

    model = tiny_hrnet(194)
    config = load_config("360_ss", base_size=64, crop_size=65)
    engine = Engine(lambda: (model, "universal"), config, torch.device("cpu"), "tiny-universal", max_pixels=10**6)
    engine.load()
    assert engine.ready.is_set() and engine.taxonomies[:2] == ["universal", "camvid-11"]
    rgb = np.asarray(Image.open(example_path()).convert("RGB").resize((96, 72)))
    data = io.BytesIO()
    Image.fromarray(rgb).save(data, format="PNG")
    _, upload = engine.prepare(data.getvalue(), engine.check_taxonomy("camvid-11"))
    (result,) = engine.run([upload])
    names, classes, _ = engine.answer(upload, result, [])
    expected = Segmenter(model, config=config, model_taxonomy="universal", output_taxonomy="camvid-11").predict(rgb)
    assert names[:3] == ["Building", "Tree", "Sky"] and np.array_equal(result.labels, expected)
    assert sum(c["pixels"] for c in classes) == rgb.shape[0] * rgb.shape[1]
