"""``mseg serve`` as users meet it: one real server process on 127.0.0.1 (shared by the module), real HTTP.

The server runs with an API key and tight limits (1 MB bodies, 1 megapixel images, batches of 2 waiting up to
200 ms, a queue of 3), so that each limit can be reached with small requests. Every bad input gets its 4xx and
its message, and the server answers the next good request.
"""

from __future__ import annotations

import base64
import concurrent.futures
import http.client
import socket
import time
import urllib.parse

import cv2
import numpy as np
import pytest
from test_serve_parts import png_header

from mseg_semantic.examples import example_path
from mseg_semantic.serve.process import child_env, start_server

httpx = pytest.importorskip("httpx", reason="needs the serve extra: pip install -e '.[serve]'")
pytest.importorskip("fastapi", reason="needs the serve extra: pip install -e '.[serve]'")
pytest.importorskip("uvicorn", reason="needs the serve extra: pip install -e '.[serve]'")

pytestmark = pytest.mark.processes

KEY = "test-key-123"
AUTH = {"X-API-Key": KEY}
ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def server():
    args = [
        "--port",
        "0",
        "--max-batch",
        "2",
        "--max-wait-ms",
        "200",
        "--max-queue",
        "3",
        "--max-pixels",
        "1000000",
        "--max-body-mb",
        "1",
        "--threads",
        "1",
    ]
    env = child_env(ROOT, MSEG_API_KEY=KEY, OMP_NUM_THREADS="1")
    process = start_server(args, env=env, timeout=120)
    yield process
    process.stop()


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as session:
        yield session


def encoded(rgb: np.ndarray, suffix: str = ".png") -> bytes:
    return cv2.imencode(suffix, np.ascontiguousarray(rgb[:, :, ::-1]))[1].tobytes()


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """A 240x180 crop-and-resize of the bundled dashcam photo, RGB."""
    bgr = cv2.imread(str(example_path()))
    return np.ascontiguousarray(cv2.resize(bgr[200:800, 100:900], (240, 180), interpolation=cv2.INTER_AREA)[:, :, ::-1])


def error_of(response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"]["status"] == status
    return body["error"]["message"]


# ---------------------------------------------------------------------------- what works
def test_health_models_docs(server, client):
    assert httpx.get(server.url + "/healthz").json() == {"status": "ok"}  # no key needed
    assert httpx.get(server.url + "/readyz").json()["ready"] is True
    model = client.get("/v1/models").json()["models"][0]
    assert (model["name"], model["taxonomy"], model["output_taxonomies"]) == (
        "camvid11-compact",
        "camvid-11",
        ["camvid-11"],
    )
    assert model["queue"]["max_queue"] == 3 and model["preset"] == "compact_360_ss"
    assert "/v1/segment" in client.get("/openapi.json").json()["paths"]
    assert client.get("/docs").status_code == 200


def test_segment_gives_the_labels_of_the_segmenter(client, photo):
    from mseg_semantic import Segmenter

    response = client.post("/v1/segment", params={"outputs": "gray,color,overlay,confidence"}, content=encoded(photo))
    assert response.status_code == 200, response.text
    answer = response.json()
    assert (answer["taxonomy"], answer["width"], answer["height"]) == ("camvid-11", 240, 180)
    assert set(answer["outputs"]) == {"gray", "color", "overlay", "confidence"}
    labels = cv2.imdecode(np.frombuffer(base64.b64decode(answer["outputs"]["gray"]["base64"]), np.uint8), -1)
    assert np.array_equal(labels, Segmenter().predict(photo))
    confidence = cv2.imdecode(np.frombuffer(base64.b64decode(answer["outputs"]["confidence"]["base64"]), np.uint8), -1)
    assert confidence.dtype == np.uint16 and confidence.shape == labels.shape
    shares = {c["name"]: c["share"] for c in answer["classes"]}
    assert abs(sum(shares.values()) - 1) < 1e-3 and max(shares, key=shares.get) == answer["classes"][0]["name"]
    counts = np.bincount(labels.ravel(), minlength=11)
    assert {c["id"]: c["pixels"] for c in answer["classes"]} == {i: int(n) for i, n in enumerate(counts) if n}


def test_multipart_upload_with_links_that_expire(client, photo):
    files = {"image": ("street.jpg", encoded(photo, ".jpg"), "image/jpeg")}
    answer = client.post("/v1/segment", params={"outputs": "overlay", "links": "true"}, files=files).json()
    link = answer["outputs"]["overlay"]
    assert link["media_type"] == "image/jpeg" and link["expires_in"] == 300
    fetched = client.get(link["url"])
    assert fetched.status_code == 200 and fetched.headers["content-type"] == "image/jpeg"
    assert cv2.imdecode(np.frombuffer(fetched.content, np.uint8), cv2.IMREAD_COLOR).shape == (180, 240, 3)
    assert "expired" in error_of(client.get(link["url"].rsplit("/", 2)[0] + "/nope/overlay"), 404)
    assert httpx.get(client.base_url.join(link["url"])).status_code == 401  # a link needs the key too


def test_concurrent_requests_of_one_size_share_a_batch(client, photo):
    before = client.get("/v1/models").json()["models"][0]["queue"]
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        codes = list(
            pool.map(lambda _: client.post("/v1/segment?outputs=", content=encoded(photo)).status_code, range(2))
        )
    after = client.get("/v1/models").json()["models"][0]["queue"]
    assert codes == [200, 200]
    assert after["items"] - before["items"] == 2 and after["batches"] - before["batches"] == 1
    assert after["largest_batch"] == 2 and after["queued"] == 0


def test_the_bundled_example_and_the_page_are_served(server, client):
    example = client.get("/v1/examples/dashcam")
    assert example.status_code == 200 and example.content == example_path().read_bytes()
    assert "unknown example 'freeway'" in error_of(client.get("/v1/examples/freeway"), 404)
    page = httpx.get(server.url + "/")  # the page's files need no key; the page sends it with its API calls
    assert page.status_code == 200 and '<script src="/page/page.js">' in page.text
    for name in ("page.js", "page.css"):
        text = httpx.get(f"{server.url}/page/{name}").text
        assert "http://" not in text and "https://" not in text  # offline: nothing from elsewhere


# ---------------------------------------------------------------------------- what is refused
def test_the_api_key_is_required_but_not_for_health_checks(server):
    for headers in ({}, {"X-API-Key": "wrong"}, {"Authorization": "Bearer wrong"}):
        assert "missing or wrong API key" in error_of(httpx.get(server.url + "/v1/models", headers=headers), 401)
    docs = httpx.get(server.url + "/docs")  # the API's description is open; its Authorize button takes the key
    assert docs.status_code == 200 and "http://" not in docs.text and "https://" not in docs.text  # offline
    assert httpx.get(server.url + "/docs-files/swagger-ui-bundle.js").status_code == 200
    schema = httpx.get(server.url + "/openapi.json").json()
    assert schema["components"]["securitySchemes"]["apiKey"] == {"type": "apiKey", "in": "header", "name": "X-API-Key"}
    assert httpx.get(server.url + "/v1/models", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    assert httpx.get(server.url + "/readyz").status_code == 200


@pytest.mark.parametrize(
    ("name", "body", "status", "message"),
    [
        ("not an image", b"hello, this is text", 400, "upload: not a readable image"),
        ("empty body", b"", 400, "upload: empty (0 bytes): no image"),
        ("zero-size image", png_header(0, 10), 400, "upload: not a readable image"),
        (
            "over --max-pixels",
            png_header(2000, 1000),
            413,
            "2000x1000 = 2,000,000 pixels is over the limit of 1,000,000",
        ),
        ("decompression bomb", png_header(100_000, 100_000), 413, "too large to decode safely"),
    ],
)
def test_bad_images_are_4xx_with_a_message(client, photo, name, body, status, message):
    assert message in error_of(client.post("/v1/segment", content=body), status)


def test_a_truncated_image_is_400(client, photo):
    data = encoded(photo, ".jpg")
    assert "not a readable image (corrupt, truncated" in error_of(client.post("/v1/segment", content=data[:-300]), 400)


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({"outputs": "gray,probs"}, "unknown output 'probs'; choose from gray,color,overlay,confidence"),
        (
            {"taxonomy": "voc2012"},
            "unknown output taxonomy 'voc2012' for this model (camvid11-compact, camvid-11); choose from camvid-11",
        ),
        ({"taxonomy": "/etc/passwd"}, "unknown output taxonomy '/etc/passwd'"),
        ({"output": "gray"}, "unknown query parameter 'output'; parameters: outputs, taxonomy, links"),
        ({"links": "maybe"}, "links: Input should be a valid boolean"),
    ],
)
def test_unknown_options_are_422_with_the_valid_ones(client, photo, query, message):
    assert message in error_of(client.post("/v1/segment", params=query, content=encoded(photo)), 422)


def test_a_multipart_form_without_the_image_is_400(client, photo):
    files = [("left", ("a.png", encoded(photo), "image/png")), ("right", ("b.png", encoded(photo), "image/png"))]
    response = client.post("/v1/segment", files=files)
    assert "the multipart form has 2 files and no field 'image'" in error_of(response, 400)


def test_a_body_over_the_limit_is_413_by_its_length_or_as_it_arrives(server, client):
    host, port = urllib.parse.urlsplit(server.url).netloc.split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    connection.putrequest("POST", "/v1/segment")
    connection.putheader("X-API-Key", KEY)
    connection.putheader("Content-Length", str(50 * 2**20))  # announced, never sent
    connection.endheaders()
    response = connection.getresponse()
    assert response.status == 413 and b"over the limit of 1,048,576 bytes" in response.read()
    connection.close()

    def chunks():  # no Content-Length: chunked, counted as it arrives
        for _ in range(20):
            yield b"\0" * 65536

    assert "request body over the limit" in error_of(client.post("/v1/segment", content=chunks()), 413)


def test_a_full_queue_is_503_with_retry_after_and_nothing_is_lost(client, photo):
    body = encoded(cv2.resize(photo, (960, 720)), ".jpg")
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda _: client.post("/v1/segment", params={"outputs": ""}, content=body), range(8)))
    codes = sorted(r.status_code for r in responses)
    assert set(codes) == {200, 503} and codes.count(200) >= 3
    busy = next(r for r in responses if r.status_code == 503)
    assert int(busy.headers["Retry-After"]) >= 1 and "the server is busy" in busy.json()["error"]["message"]


def test_a_client_that_disconnects_frees_its_slot(server, client, photo):
    before = client.get("/v1/models").json()["models"][0]["queue"]
    big = encoded(cv2.resize(photo, (1152, 864)), ".jpg")  # under the 1-megapixel limit
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        busy = [pool.submit(client.post, "/v1/segment?outputs=", content=big) for _ in range(2)]  # hold the worker
        time.sleep(0.3)
        host, port = urllib.parse.urlsplit(server.url).netloc.split(":")
        with socket.create_connection((host, int(port))) as gone:
            gone.sendall(
                b"POST /v1/segment?outputs= HTTP/1.1\r\nHost: x\r\nX-API-Key: "
                + KEY.encode()
                + f"\r\nContent-Length: {len(big)}\r\n\r\n".encode()
                + big
            )
            time.sleep(0.2)
        assert [f.result().status_code for f in busy] == [200, 200]
    deadline = time.monotonic() + 10
    while (queue := client.get("/v1/models").json()["models"][0]["queue"])["queued"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert queue["queued"] == 0
    assert queue["cancelled"] - before["cancelled"] == 1 and queue["items"] - before["items"] == 2


def test_the_server_still_serves_after_all_that(client, photo):
    assert client.post("/v1/segment", content=encoded(photo)).status_code == 200
