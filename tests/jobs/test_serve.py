"""`python -m clip_lab serve` on the trained demo checkpoint: every route through FastAPI's test client, its answers
equal to the Python API's and to the `search` job's, every 4xx case with one clear line, and a bounded load on a
live loopback server in which no request fails."""

import http.client
import io
import json
import struct
import threading
import zlib
from dataclasses import asdict
from urllib.parse import quote, urlsplit

import numpy as np
import pytest
from cli_args import ckpt_of
from PIL import Image

from clip_lab.__main__ import main
from clip_lab.errors import ClipLabError
from clip_lab.eval.index import IndexSpec
from clip_lab.jobs import search, serve
from clip_lab.jobs.retriever import Retriever, normalized

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402


@pytest.fixture(scope="module")
def served(trained_run, tmp_path_factory):
    """(test client, the retrievers it serves): the trained checkpoint twice, as `t` and `t:best` (two models side
    by side), its galleries in a cache folder of this module's own."""
    cache = tmp_path_factory.mktemp("serve_cache")
    path = ckpt_of(trained_run)
    retrievers = serve.load_retrievers([path, path], None, IndexSpec(), "cpu", cache_dir=str(cache))
    return TestClient(serve.build_app(retrievers)), retrievers


@pytest.fixture(scope="module")
def photo(demo_root):
    """A val2014 JPEG's bytes and its image id."""
    return (demo_root / "val2014" / "COCO_val2014_000001000003.jpg").read_bytes(), 1000003


def jpeg(size=(40, 30), color=(200, 30, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, "JPEG")
    return out.getvalue()


def post(client, path, data, kind="image/jpeg", **params):
    return client.post(path, content=data, headers={"content-type": kind}, params=params)


def test_health_models_and_the_page(served):
    client, retrievers = served
    assert client.get("/api/health").json() == {"status": "ok", "models": 2}
    models = client.get("/api/models").json()
    assert [m["name"] for m in models] == ["t", "t:best"]
    r = retrievers["t"]
    assert models[0]["split"] == "val2014" and models[0]["images"] == len(r.images) == 96
    assert models[0]["captions"] == len(r.split.captions) and models[0]["index"] == {"kind": "exact", "device": "cpu"}
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<script src="app.js">' in page.text
    assert "showDetail" in client.get("/app.js").text and ".card" in client.get("/style.css").text
    assert client.get("/docs").status_code == 200
    schema = client.get("/openapi.json").json()
    assert "/api/models/{model}/images" in schema["paths"] and "/api/models/{model}/classify" in schema["paths"]


def test_text_query_equals_the_python_api_and_the_search_job(served, trained_run, tmp_path):
    client, retrievers = served
    response = client.get("/api/models/t/images", params={"text": "a red circle", "k": 7})
    assert response.status_code == 200
    body = response.json()
    expected = [asdict(m) for m in retrievers["t"].search_text("a red circle", 7)]
    assert body["results"] == expected and body["k"] == 7 and body["gallery_size"] == 96
    assert body["query"]["text"] == "a red circle" and body["unknown_words"] == []
    # the search job on the same checkpoint and data ranks the same images with the same scores
    job = search.main(
        ["--ckpt_path", ckpt_of(trained_run), "--text", "a red circle", "--k", "7", "--out", str(tmp_path / "s.json")]
    )
    assert [(r["image_id"], r["score"]) for r in job["results"]] == [(m["image_id"], m["score"]) for m in expected]
    # each stage's milliseconds, as Server-Timing says them
    stages = dict(part.split(";dur=") for part in response.headers["server-timing"].split(", "))
    assert set(stages) == {"encode", "search", "serialize"} and all(float(v) >= 0 for v in stages.values())
    # both models answer the same query (the page's two panes)
    assert (
        client.get("/api/models/t:best/images", params={"text": "a red circle", "k": 7}).json()["results"]
        == (body["results"])
    )


def test_a_caption_of_the_split_names_its_true_images(served):
    client, retrievers = served
    split = retrievers["t"].split
    caption = split.captions[11]
    owners = {int(split.image_ids[split.caption_image[j]]) for j, c in enumerate(split.captions) if c == caption}
    # case, spacing and a final full stop do not matter
    body = client.get("/api/models/t/images", params={"text": f"  {caption.upper()}. ", "k": 5}).json()
    assert set(body["true_image_ids"]) == owners and int(split.image_ids[split.caption_image[11]]) in owners
    assert client.get("/api/models/t/images", params={"text": "zebra zebra"}).json()["true_image_ids"] == []


def test_repeated_text_queries_reuse_their_embedding(served):
    _, retrievers = served
    r = retrievers["t"]
    calls = []
    encode = r.encoder.encode
    r.encoder.encode = lambda texts, **kw: calls.append(list(texts)) or encode(texts, **kw)
    try:
        first = r.embed_text("a green square, cached")
        again = r.embed_text("  a green square, cached ")
    finally:
        del r.encoder.encode
    assert calls == [["a green square, cached"]] and again is first


def test_gallery_image_queries_give_captions_and_images(served, photo):
    client, retrievers = served
    _, image_id = photo
    r = retrievers["t"]
    captions = client.get("/api/models/t/captions", params={"image_id": image_id, "k": 5}).json()
    assert captions["results"] == [asdict(m) for m in r.search_image(image_id, 5, "captions")]
    assert captions["gallery_size"] == len(r.split.captions) and captions["query"]["image_id"] == image_id
    images = client.get("/api/models/t/images", params={"image_id": image_id, "k": 3}).json()
    assert images["results"][0]["image_id"] == image_id  # an image is its own nearest image
    assert images["results"][0]["score"] == pytest.approx(1.0, abs=1e-4)
    info = client.get(f"/api/models/t/gallery/{image_id}").json()
    assert info == {
        "image_id": image_id,
        "file_name": "COCO_val2014_000001000003.jpg",
        "captions": r.image_captions(image_id),
    }


def test_uploads_give_what_the_python_api_gives_for_the_file(served, photo, demo_root):
    client, retrievers = served
    data, image_id = photo
    r = retrievers["t"]
    captions = post(client, "/api/models/t/captions", data, k=4).json()
    assert captions["results"] == [asdict(m) for m in r.search_image(data, 4, "captions")]
    path = demo_root / "val2014" / "COCO_val2014_000001000003.jpg"
    with Image.open(path) as img:
        size = img.size
    assert captions["query"]["upload"] == {"bytes": len(data), "width": size[0], "height": size[1], "format": "JPEG"}
    images = post(client, "/api/models/t/images", data, k=3).json()
    assert images["results"] == [asdict(m) for m in r.search_image(path, 3, "images")]
    assert images["results"][0]["image_id"] == image_id  # decoded as the gallery was: itself, first
    classes = ["circle", "square", "triangle"]
    body = post(client, "/api/models/t/classify", data, classes=classes).json()
    assert body["result"] == asdict(r.classify(path, classes)) and body["classes"] == classes
    assert body["templates"] == r.default_templates and sum(body["result"]["probabilities"].values()) == (
        pytest.approx(1.0, abs=1e-4)
    )
    own = post(client, "/api/models/t/classify", data, classes=classes, templates=["a drawing of a {}"]).json()
    assert own["templates"] == ["a drawing of a {}"] and own["result"] == asdict(
        r.classify(path, classes, ["a drawing of a {}"])
    )


def test_distinct_captions_skip_repeated_texts_and_keep_the_ranking(served, photo):
    client, retrievers = served
    _, image_id = photo
    r = retrievers["t"]
    everything = r.search_image(image_id, len(r.split.captions), "captions")
    seen, expected = set(), []
    for m in everything:  # the full ranking, each text at its best rank only
        if normalized(m.caption) not in seen:
            seen.add(normalized(m.caption))
            expected.append((m.caption_id, m.score))
    assert len(expected) < len(everything)  # the demo's captions repeat: the test means something
    distinct = r.search_image(image_id, 8, "captions", distinct=True)
    assert [(m.caption_id, m.score) for m in distinct] == expected[:8]
    assert [m.rank for m in distinct] == list(range(1, 9))
    body = client.get("/api/models/t/captions", params={"image_id": image_id, "k": 8, "distinct": "true"}).json()
    assert body["results"] == [asdict(m) for m in distinct]
    # more distinct texts asked for than there are: every one of them, once
    assert len(r.search_image(image_id, 100, "captions", distinct=True)) == min(100, len(expected))


def test_thumbnails_come_by_id_from_the_split(served, photo, demo_root):
    client, _ = served
    _, image_id = photo
    response = client.get(f"/api/models/t/gallery/{image_id}/thumbnail", params={"size": 96})
    assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
    assert "max-age" in response.headers["cache-control"]
    with Image.open(io.BytesIO(response.content)) as img:
        assert img.size == (96, 96)
        shown = np.asarray(img.convert("RGB"), dtype=np.float32)
    with Image.open(demo_root / "val2014" / "COCO_val2014_000001000003.jpg") as original:
        side = min(original.size)
        box = ((original.width - side) // 2, (original.height - side) // 2)
        square = original.crop((*box, box[0] + side, box[1] + side)).convert("RGB").resize((96, 96))
    assert np.abs(shown - np.asarray(square, dtype=np.float32)).mean() < 8  # the same picture (JPEG, resampling)
    assert client.get("/api/models/t/gallery/1/thumbnail").status_code == 404


BOMB = None


def bomb() -> bytes:
    """A 40 kB PNG of 8,000 x 8,000 pixels (64 megapixels: 192 MB once decoded)."""
    global BOMB
    if BOMB is None:
        out = io.BytesIO()
        Image.new("1", (8000, 8000)).save(out, "PNG", optimize=True)
        BOMB = out.getvalue()
    return BOMB


def truncated() -> bytes:
    """A JPEG cut off at two thirds: its header reads, its pixels do not."""
    out = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8)).save(out, "JPEG")
    return out.getvalue()[: len(out.getvalue()) * 2 // 3]


URL = "/api/models/t"
GET = [  # (path, params, status, the message's words)
    (f"{URL}/images", {"text": "a", "k": 0}, 422, "k: Input should be greater than or equal to 1"),
    (f"{URL}/images", {"text": "a", "k": 101}, 422, "k: Input should be less than or equal to 100"),
    (f"{URL}/images", {"text": "  "}, 422, "text: the query is empty"),
    (f"{URL}/images", {"text": "a" * 501}, 422, "text: String should have at most 500 characters"),
    (f"{URL}/images", {}, 422, "give one query"),
    (f"{URL}/images", {"text": "a", "image_id": 1000003}, 422, "give one query"),
    ("/api/models/nobody/images", {"text": "a"}, 404, "no model 'nobody': this server has t, t:best"),
    (f"{URL}/images", {"image_id": 5}, 404, "image id 5 is not an image of val2014"),
    (f"{URL}/captions", {"image_id": "x"}, 422, "image_id: Input should be a valid integer"),
    (f"{URL}/gallery/77", {}, 404, "image id 77 is not an image of val2014"),
    (f"{URL}/gallery/1000003/thumbnail", {"size": 4096}, 422, "size: Input should be less than or equal to 512"),
    ("/api/nothing", {}, 404, "Not Found"),
]
POST = [  # (path, body, content type, params, status, the message's words)
    (f"{URL}/captions", b"not an image", "image/jpeg", {}, 400, "the upload is not an image this server reads"),
    (f"{URL}/captions", b"", "image/jpeg", {}, 400, "the request has no body"),
    (f"{URL}/images", "TRUNCATED", "image/jpeg", {}, 400, "the image cannot be decoded"),
    (f"{URL}/images", "BOMB", "image/png", {}, 400, "8000 x 8000 pixels, more than 50 megapixels"),
    (f"{URL}/images", "JPEG", "text/plain", {}, 415, "Content-Type image/*, not text/plain"),
    (f"{URL}/classify", "JPEG", "image/jpeg", {"classes": ["one"]}, 400, "at least two"),
    (f"{URL}/classify", "JPEG", "image/jpeg", {"classes": ["a", "a"]}, 400, "class names repeat"),
    (f"{URL}/classify", "JPEG", "image/jpeg", {}, 422, "classes: Field required"),
    (f"{URL}/classify", "JPEG", "image/jpeg", {"classes": ["a", "b"], "templates": ["x"]}, 400, "one {} each"),
    (f"{URL}/classify", "JPEG", "image/jpeg", {"classes": list(map(str, range(65)))}, 422, "at most 64 items"),
]


@pytest.mark.parametrize("path, params, status, message", GET)
def test_bad_queries_get_a_4xx_with_one_clear_line(served, path, params, status, message):
    response = served[0].get(path, params=params)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert message in error and "\n" not in error, error


@pytest.mark.parametrize("path, body, kind, params, status, message", POST)
def test_bad_uploads_get_a_4xx_with_one_clear_line(served, path, body, kind, params, status, message):
    body = {"TRUNCATED": truncated, "BOMB": bomb, "JPEG": jpeg}[body]() if isinstance(body, str) else body
    response = post(served[0], path, body, kind, **params)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert message in error and "\n" not in error, error


def test_an_upload_over_the_byte_limit_is_refused_as_it_streams(served, monkeypatch):
    client, _ = served
    monkeypatch.setattr(serve, "MAX_UPLOAD_BYTES", 1000)
    data = jpeg((300, 300), (10, 200, 90)) + b"\0" * 2000
    response = post(client, "/api/models/t/images", data)
    assert response.status_code == 413
    assert response.json()["error"] == f"the upload is {len(data)} bytes, more than the 1000 bytes allowed"

    def chunks():  # no Content-Length: the limit holds while the body streams in
        yield data[:800]
        yield data[800:]

    streamed = client.post("/api/models/t/images", content=chunks(), headers={"content-type": "image/jpeg"})
    assert streamed.status_code == 413
    assert streamed.json()["error"] == "the upload is more than the 1000 bytes allowed"


def test_model_names_are_the_runs_and_unique():
    assert serve.model_names(["results/baseline/checkpoints/best.ckpt", "results/bn_head/checkpoints/best.ckpt"]) == [
        "baseline",
        "bn_head",
    ]
    assert serve.model_names(
        ["r/a/checkpoints/best.ckpt", "r/a/checkpoints/last.ckpt", "x/a/checkpoints/best.ckpt"]
    ) == [
        "a",
        "a:last",
        "a:best",
    ]
    assert serve.model_names(["m.ckpt", "m.ckpt", "m.ckpt"]) == ["m", "m:m", "m-2"]


def test_the_job_checks_its_input_before_loading_anything(capsys, tmp_path):
    assert main(["serve", "--ckpt", str(tmp_path / "nowhere.ckpt")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "checkpoint" in err[0] and "nowhere.ckpt does not exist" in err[0]
    assert main(["serve", "--ckpt", "x.ckpt", "--port", "70000"]) == 2
    assert "--port must be 0-65535" in capsys.readouterr().err


def test_concurrent_clients_on_a_live_server_all_get_their_answers(served):
    """16 clients x 12 requests each on loopback (bounded: it stops by itself); every request answers 200 with the
    results the Python API gives for its query, whatever the interleaving."""
    _, retrievers = served
    queries = [f"a {c} {s}" for c in ("red", "green", "blue", "white") for s in ("circle", "square", "cross")]
    expected = {q: [m.image_id for m in retrievers["t"].search_text(q, 5)] for q in queries}
    failures, done = [], []
    with serve.running(serve.build_app(retrievers)) as url:
        host = urlsplit(url)

        def client(i):
            conn = http.client.HTTPConnection(host.hostname, host.port, timeout=60)
            try:
                for j in range(12):
                    q = queries[(i + j) % len(queries)]
                    model = "t" if j % 2 else "t:best"
                    conn.request("GET", f"/api/models/{quote(model)}/images?text={quote(q)}&k=5")
                    response = conn.getresponse()
                    body = json.loads(response.read())
                    if response.status != 200 or [m["image_id"] for m in body["results"]] != expected[q]:
                        failures.append((q, response.status, body))
                    done.append(1)
                # an upload among the text queries takes its turn on the model too
                conn.request("POST", "/api/models/t/captions?k=3", body=jpeg(), headers={"content-type": "image/jpeg"})
                response = conn.getresponse()
                response.read()
                if response.status != 200:
                    failures.append(("upload", response.status))
            except Exception as e:  # noqa: BLE001 - any failure of any client fails the test
                failures.append(repr(e))
            finally:
                conn.close()

        threads = [threading.Thread(target=client, args=(i,)) for i in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
    assert not failures, failures[:3]
    assert len(done) == 16 * 12


def test_the_retriever_refuses_what_it_cannot_answer(served):
    _, retrievers = served
    r: Retriever = retrievers["t"]
    with pytest.raises(ClipLabError, match="empty query"):
        r.search_text(" ")
    with pytest.raises(ClipLabError, match="k must be at least 1"):
        r.search_text("a red circle", 0)
    with pytest.raises(ClipLabError, match="target must be 'images' or 'captions'"):
        r.search_image(1000003, 3, "texts")
    with pytest.raises(ClipLabError, match="a PIL image, a file path or the file's bytes"):
        r.embed_images([3.5])
    assert len(r.search_text("a red circle", 1000)) == 96  # k beyond the gallery: the whole gallery


def test_an_hnsw_server_answers_as_the_exact_one_on_a_small_gallery(trained_run, tmp_path):
    pytest.importorskip("faiss")
    path = ckpt_of(trained_run)
    retrievers = serve.load_retrievers([path], None, IndexSpec("hnsw"), "cpu", cache_dir=str(tmp_path / "cache"))
    client = TestClient(serve.build_app(retrievers))
    (info,) = client.get("/api/models").json()
    assert info["index"]["kind"] == "hnsw" and info["index"]["ef_search"] == 128
    exact = Retriever.load(path, cache_dir=str(tmp_path / "cache")).search_text("a red circle", 10)
    # 96 images and efSearch 128: the graph walk sees every image, so it finds the exact top 10
    body = client.get("/api/models/t/images", params={"text": "a red circle", "k": 10}).json()
    assert [m["image_id"] for m in body["results"]] == [m.image_id for m in exact]
    assert [m["score"] for m in body["results"]] == pytest.approx([m.score for m in exact], abs=1e-5)


def png_header(width: int, height: int) -> bytes:
    """The first bytes of a PNG claiming `width` x `height` pixels: a header Pillow reads, and no pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def test_more_upload_cases_and_an_unexpected_failure(served, monkeypatch):
    client, retrievers = served
    # past Pillow's own guard (twice its MAX_IMAGE_PIXELS): still the size message, not "not an image"
    huge = post(client, f"{URL}/images", png_header(60000, 60000), "image/png")
    assert huge.status_code == 400 and "more than 50 megapixels" in huge.json()["error"]
    # no Content-Type: refused (a cross-origin page could send one without the server's leave); the case of the
    # media type and its parameters do not matter
    bare = client.post(f"{URL}/images", content=jpeg(), headers={"content-type": ""})
    assert bare.status_code == 415 and "not none" in bare.json()["error"]
    assert post(client, f"{URL}/images", jpeg(), "IMAGE/JPEG; q=1").status_code == 200
    # 64 classes x the 6 default templates: more prompts than one request may have embedded
    many = post(client, f"{URL}/classify", jpeg(), classes=list(map(str, range(64))), templates=["a {}"] * 9)
    assert many.status_code == 422 and "more than 512 prompts" in many.json()["error"]
    # a failure nobody foresaw: JSON with one line, and the traceback in the server's log only
    monkeypatch.setattr(retrievers["t"], "search_embedding", lambda *a, **k: 1 / 0)
    failed = TestClient(client.app, raise_server_exceptions=False).get(f"{URL}/images", params={"text": "a"})
    assert failed.status_code == 500
    assert failed.json() == {"error": "the server failed on this request (ZeroDivisionError); its log says more"}


def test_a_loopback_server_answers_only_its_own_host_names(served):
    _, retrievers = served
    app = serve.build_app(retrievers, hosts=["127.0.0.1", "localhost"])
    assert TestClient(app, base_url="http://127.0.0.1:8000").get("/api/health").status_code == 200
    assert TestClient(app, base_url="http://localhost:8000").get("/api/health").status_code == 200
    # a page elsewhere whose DNS name points here (DNS rebinding) sends its own name as the Host
    assert TestClient(app, base_url="http://evil.example").get("/api/health").status_code == 400


def test_a_taken_port_is_one_line_before_any_model_loads():
    first = serve.listen("127.0.0.1", 0)
    try:
        port = first.getsockname()[1]
        with pytest.raises(ClipLabError, match=f"cannot listen on 127.0.0.1:{port} .*pass another --port"):
            serve.listen("127.0.0.1", port)
    finally:
        first.close()
