"""`python -m clip_lab serve`: a search page and HTTP API (FastAPI) over trained checkpoints and pretrained models.

Every route is a thin layer over `Retriever`. Images a client sends are the request's body (`Content-Type:
image/jpeg`, `image/png`, ...), read into memory up to MAX_UPLOAD_BYTES and opened up to MAX_PIXELS: nothing a
client sends is written to disk (multipart uploads spool large files to a temporary file) or names a file; gallery
pictures are found by image id through the split's own records. Errors are `{"error": "one line"}` with a 4xx status.
"""

import asyncio
import io
import logging
import socket  # no `from __future__ import annotations`: FastAPI reads the routes' annotations, local names included
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
from PIL import Image

from clip_lab.data import image_cache
from clip_lab.errors import ClipLabError
from clip_lab.eval.index import KINDS, IndexSpec
from clip_lab.jobs.infer import CKPT_HELP, add_data_args, data_flags, open_checkpoint
from clip_lab.jobs.retriever import CaptionMatch, Classification, ImageMatch, Lru, NotInGallery, Retriever
from clip_lab.models.pretrained import is_pretrained_name, short_name
from clip_lab.options import JobParser

log = logging.getLogger(__name__)

WEB = Path(__file__).resolve().parents[1] / "web"  # the page: index.html, app.js, style.css (no build step)
MAX_UPLOAD_BYTES = 10 << 20  # 10 MiB: a phone photo is 2-6 MB
MAX_PIXELS = 50_000_000  # a 48-megapixel phone photo opens; a decompression bomb (a tiny file of huge size) does not
UPLOAD_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")  # decoders an upload may reach, no others
MAX_K = 100  # results per query
MAX_QUERY_CHARS = 500  # a caption is ~60; CLIP's text tower reads 77 tokens at most
MAX_CLASSES, MAX_TEMPLATES = 64, 32
MAX_PROMPTS = 512  # classes x templates one request may have embedded (the ViT-B/32 tower: ~1 s of a CPU)
DECODES = 2  # uploads decoded at once
LOOPBACK = ("127.0.0.1", "localhost", "::1")
THUMB_SIZES = (64, 512)  # thumbnail sizes a client may ask for, inclusive
CACHED_THUMBNAILS = 2048  # encoded JPEGs kept (~15 KB each at 256 px)


def require_fastapi() -> Any:
    """The fastapi module; one clear line when the serving extra is not installed."""
    try:
        import fastapi
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise ClipLabError(
            f"serve needs FastAPI and uvicorn, which are not installed ({type(e).__name__}: {e.name}); "
            "`pip install -r requirements.txt` (or `pip install clip-lab[serve]`)"
        ) from e
    return fastapi


def model_names(paths: list[str]) -> list[str]:
    """A short unique name per checkpoint: its run's folder name (`results/<run>/checkpoints/best.ckpt` -> `<run>`),
    with the file's stem when one run gives two checkpoints, and a number after that; a pretrained model's short name
    (`hf:google/siglip-base-patch16-224` -> `siglip-base-patch16-224`)."""
    names = []
    for path in paths:
        p = Path(path)
        if is_pretrained_name(path):
            run = stem = short_name(path)
        else:
            run, stem = (p.parent.parent.name if p.parent.name == "checkpoints" else p.stem), p.stem
        name = run if run not in names else f"{run}:{stem}"
        n = 1
        while name in names:
            n += 1
            name = f"{run}-{n}"
        names.append(name)
    return names


def open_upload(data: bytes) -> Image.Image:
    """The decoded image of an upload's bytes, or ClipLabError naming why not (size, format, damage)."""
    if not data:
        raise ClipLabError("the request has no body: send the image file's bytes as the body (Content-Type image/*)")
    try:
        img = Image.open(io.BytesIO(data), formats=UPLOAD_FORMATS)  # reads the header only
    except Image.DecompressionBombError as e:  # Pillow's own guard, at twice its MAX_IMAGE_PIXELS
        raise ClipLabError(f"the image is more than {MAX_PIXELS / 1e6:.0f} megapixels: send a smaller one") from e
    except (OSError, ValueError) as e:
        raise ClipLabError(f"the upload is not an image this server reads ({', '.join(UPLOAD_FORMATS)})") from e
    if img.width * img.height > MAX_PIXELS:
        raise ClipLabError(
            f"the image is {img.width} x {img.height} pixels, more than {MAX_PIXELS / 1e6:.0f} megapixels: "
            "send a smaller one"
        )
    try:
        img.load()
    except (OSError, ValueError, Image.DecompressionBombError, SyntaxError) as e:
        raise ClipLabError(f"the image cannot be decoded ({type(e).__name__}): it is damaged or truncated") from e
    return img


def build_app(retrievers: dict[str, Retriever], hosts: list[str] | None = None) -> Any:
    """The FastAPI app: the page at `/`, the API under `/api` (OpenAPI docs at `/docs`), over named retrievers.
    `hosts`: the Host headers answered (None: any), so that a web page elsewhere cannot reach a server on this
    machine through a DNS name of its own that points here (DNS rebinding)."""
    require_fastapi()
    from fastapi import Depends, FastAPI, HTTPException, Query, Request
    from fastapi import Path as PathParam
    from fastapi.concurrency import run_in_threadpool
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse, Response
    from pydantic import BaseModel
    from starlette.exceptions import HTTPException as StarletteHTTPException

    class Health(BaseModel):
        status: str
        models: int

    class ModelInfo(BaseModel):
        name: str
        checkpoint: str
        dataset: str
        split: str
        images: int  # readable images in the gallery
        captions: int
        index: dict[str, Any]
        embed_dim: int
        device: str
        logit_scale: float
        logit_bias: float | None  # SigLIP's: class probabilities are sigmoids of scale x cosine + bias

    class QueryInfo(BaseModel):
        text: str | None = None
        image_id: int | None = None
        upload: dict[str, Any] | None = None  # bytes, width, height, format of an uploaded image

    class ImagesResult(BaseModel):
        model: str
        query: QueryInfo
        k: int
        gallery_size: int
        unknown_words: list[str]  # query words the text encoder reads as its unknown token
        true_image_ids: list[int]  # for a text that is a caption of the split: the image(s) it describes
        results: list[ImageMatch]

    class CaptionsResult(BaseModel):
        model: str
        query: QueryInfo
        k: int
        gallery_size: int
        results: list[CaptionMatch]

    class ClassifyResult(BaseModel):
        model: str
        query: QueryInfo
        classes: list[str]
        templates: list[str]
        unknown_words: list[str]
        result: Classification

    class Examples(BaseModel):
        captions: list[str]

    class GalleryImage(BaseModel):
        image_id: int
        file_name: str
        captions: list[str]

    if any(r.ckpt.device.type == "cuda" for r in retrievers.values()):
        # cuDNN's attention builds a plan for every new query length (~4 ms a layer, 50-100 ms a query until each
        # length was seen): a server sees a new length in most requests. PyTorch's flash / memory-efficient kernels
        # need no plan. The switch is process-wide, and this process serves.
        torch.backends.cuda.enable_cudnn_sdp(False)

    class Error(BaseModel):
        error: str  # one line: what is wrong and what to change

    app = FastAPI(
        responses={code: {"model": Error} for code in (400, 404, 413, 415, 422)},
        title="clip_lab search",
        version=__import__("clip_lab").__version__,
        description="Text and image search over the galleries of trained clip_lab checkpoints, and zero-shot "
        "classification. Images are sent as the request body (Content-Type image/jpeg, image/png, ...).",
    )
    names = list(retrievers)
    thumbnails, thumbnails_lock = Lru(CACHED_THUMBNAILS), threading.Lock()

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    @app.exception_handler(StarletteHTTPException)  # FastAPI's, and Starlette's own (unknown routes)
    async def http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        return error(e.status_code, str(e.detail))

    @app.exception_handler(Exception)
    async def crashed(request: Request, e: Exception) -> JSONResponse:
        log.exception("%s %s failed", request.method, request.url.path)
        return error(500, f"the server failed on this request ({type(e).__name__}); its log says more")

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())[1:]) or "request"
        return error(422, f"{where}: {first.get('msg', 'invalid')}")

    def retriever(model: Annotated[str, PathParam(description="a name from /api/models")]) -> Retriever:
        if model not in retrievers:
            raise HTTPException(404, f"no model {model!r}: this server has {', '.join(names)}")
        return retrievers[model]

    Model = Annotated[Retriever, Depends(retriever)]
    K = Annotated[int, Query(ge=1, le=MAX_K, description="results to return")]
    Distinct = Annotated[bool, Query(description="leave out captions whose text repeats a better-ranked one")]

    async def body(request: Request) -> bytes:
        """The request body, in memory only, refused past MAX_UPLOAD_BYTES (declared, or as it streams in)."""
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        # required: a page on another site can send a cross-origin POST without asking this server first only as
        # text/plain or a form (CORS's "simple" types), never as image/*
        if not kind.startswith(("image/", "application/octet-stream")):
            raise HTTPException(415, f"send the image's bytes with Content-Type image/*, not {kind or 'none'}")
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > MAX_UPLOAD_BYTES:
            raise HTTPException(413, f"the upload is {declared} bytes, more than the {MAX_UPLOAD_BYTES} bytes allowed")
        data = bytearray()
        async for chunk in request.stream():
            data += chunk
            if len(data) > MAX_UPLOAD_BYTES:
                raise HTTPException(413, f"the upload is more than the {MAX_UPLOAD_BYTES} bytes allowed")
        return bytes(data)

    Upload = Annotated[bytes, Depends(body)]

    decoding = asyncio.Semaphore(DECODES)

    async def decoded(r: Retriever, data: bytes) -> tuple[Image.Image, np.ndarray]:
        """(the upload's image, its square as the gallery's images were made), on a worker thread: a large photo
        takes a while, and neither the event loop nor the model thread waits for it. At most DECODES at once: a
        48-megapixel photo is ~150 MB decoded."""
        size = r.ckpt.data["cache_image_size"]

        def decode() -> tuple[Image.Image, np.ndarray]:
            img = open_upload(data)
            return img, image_cache.square_pil(img, size)

        async with decoding:
            return await run_in_threadpool(checked, decode)

    # Every model call runs on this one thread: requests take the device in the order they came (a lock wakes
    # waiters in no order), and what CUDA keeps per thread (cuDNN plans, the current stream) is built once, not in
    # each of the server's short-lived worker threads.
    model_thread = ThreadPoolExecutor(1, thread_name_prefix="clip_lab-model")

    async def on_model(fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(model_thread, fn, *args)

    upload_doc = {"requestBody": {"content": {"image/*": {"schema": {"type": "string", "format": "binary"}}}}}

    def timed(stages: dict[str, float], name: str, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        try:
            return fn()
        finally:
            stages[name] = stages.get(name, 0.0) + (time.perf_counter() - t0) * 1e3

    def respond(result: BaseModel, stages: dict[str, float]) -> Response:
        """The result as JSON, with a Server-Timing header of each stage's milliseconds (serialize included)."""
        content = timed(stages, "serialize", lambda: result.model_dump_json().encode())
        timing = ", ".join(f"{k};dur={v:.3f}" for k, v in stages.items())
        return Response(content, media_type="application/json", headers={"Server-Timing": timing})

    def checked(fn: Callable[[], Any]) -> Any:
        """`fn()`, its ClipLabError (bad input the user can fix) as a 400 with that line, an unknown id as a 404."""
        try:
            return fn()
        except NotInGallery as e:
            raise HTTPException(404, str(e)) from e
        except ClipLabError as e:
            raise HTTPException(400, str(e)) from e

    def upload_query(img: Image.Image, data: bytes) -> QueryInfo:
        return QueryInfo(upload={"bytes": len(data), "width": img.width, "height": img.height, "format": img.format})

    def search_images(name: str, r: Retriever, query: QueryInfo, embed: Callable[[], Any], k: int) -> Response:
        stages: dict[str, float] = {}
        emb = timed(stages, "encode", lambda: checked(embed))
        matches = timed(stages, "search", lambda: r.search_embedding(emb, k, "images"))
        text = query.text
        result = ImagesResult(
            model=name,
            query=query,
            k=len(matches),
            gallery_size=len(r.images),
            unknown_words=r.unknown_words([text]) if text else [],
            true_image_ids=r.true_images(text) if text else [],
            results=matches,
        )
        return respond(result, stages)

    def search_captions(
        name: str, r: Retriever, query: QueryInfo, embed: Callable[[], Any], k: int, distinct: bool
    ) -> Response:
        stages: dict[str, float] = {}
        emb = timed(stages, "encode", lambda: checked(embed))
        matches = timed(stages, "search", lambda: r.search_embedding(emb, k, "captions", distinct))
        result = CaptionsResult(model=name, query=query, k=len(matches), gallery_size=len(r.captions), results=matches)
        return respond(result, stages)

    # -- routes ----------------------------------------------------------------------------------------------------
    page = {f: (WEB / f).read_bytes() for f in ("index.html", "app.js", "style.css")}
    media = {"html": "text/html; charset=utf-8", "js": "text/javascript; charset=utf-8", "css": "text/css"}

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index() -> Response:
        return Response(page["index.html"], media_type=media["html"])

    @app.get("/app.js", include_in_schema=False)
    def script() -> Response:
        return Response(page["app.js"], media_type=media["js"])

    @app.get("/style.css", include_in_schema=False)
    def style() -> Response:
        return Response(page["style.css"], media_type=media["css"])

    @app.get("/api/health", response_model=Health, tags=["server"])
    def health() -> Health:
        return Health(status="ok", models=len(retrievers))

    @app.get("/api/models", response_model=list[ModelInfo], tags=["server"])
    def models() -> list[ModelInfo]:
        out = []
        for name, r in retrievers.items():
            out.append(
                ModelInfo(
                    name=name,
                    checkpoint=r.ckpt.name,
                    dataset=r.ckpt.data["dataset"],
                    split=r.split.name,
                    images=len(r.images),
                    captions=len(r.captions),
                    index=r.images.index.describe(),
                    embed_dim=r.ckpt.embed_dim,
                    device=r.ckpt.device.type,
                    logit_scale=round(r.ckpt.logit_scale, 4),
                    logit_bias=None if r.ckpt.logit_bias is None else round(r.ckpt.logit_bias, 4),
                )
            )
        return out

    @app.get("/api/models/{model}/images", response_model=ImagesResult, tags=["search"])
    async def images(
        model: str,
        r: Model,
        k: K = 10,
        text: Annotated[str | None, Query(max_length=MAX_QUERY_CHARS, description="a text query")] = None,
        image_id: Annotated[int | None, Query(description="a gallery image as the query")] = None,
    ) -> Response:
        """The top-k gallery images for a text, or for a gallery image (exactly one of the two)."""
        if (text is None) == (image_id is None):
            raise HTTPException(422, "give one query: text=words or image_id=an id of the gallery")
        if text is not None:
            if not text.strip():
                raise HTTPException(422, "text: the query is empty; give some words, e.g. 'a red circle'")
            return await on_model(search_images, model, r, QueryInfo(text=text.strip()), lambda: r.embed_text(text), k)
        return await on_model(search_images, model, r, QueryInfo(image_id=image_id), lambda: r.embed_image(image_id), k)

    @app.post("/api/models/{model}/images", response_model=ImagesResult, tags=["search"], openapi_extra=upload_doc)
    async def images_of_upload(model: str, r: Model, data: Upload, k: K = 10) -> Response:
        """The top-k gallery images for an uploaded image (the request body)."""
        img, square = await decoded(r, data)
        embed = lambda: r.embed_squares(square[None])[0]
        return await on_model(search_images, model, r, upload_query(img, data), embed, k)

    @app.get("/api/models/{model}/captions", response_model=CaptionsResult, tags=["search"])
    async def captions(
        model: str,
        r: Model,
        image_id: Annotated[int, Query(description="a gallery image")],
        k: K = 10,
        distinct: Distinct = False,
    ) -> Response:
        """The top-k gallery captions for a gallery image."""
        embed = lambda: r.embed_image(image_id)
        return await on_model(search_captions, model, r, QueryInfo(image_id=image_id), embed, k, distinct)

    @app.post("/api/models/{model}/captions", response_model=CaptionsResult, tags=["search"], openapi_extra=upload_doc)
    async def captions_of_upload(model: str, r: Model, data: Upload, k: K = 10, distinct: Distinct = False) -> Response:
        """The top-k gallery captions for an uploaded image (the request body)."""
        img, square = await decoded(r, data)
        embed = lambda: r.embed_squares(square[None])[0]
        return await on_model(search_captions, model, r, upload_query(img, data), embed, k, distinct)

    @app.post(
        "/api/models/{model}/classify", response_model=ClassifyResult, tags=["zero-shot"], openapi_extra=upload_doc
    )
    async def classify(
        model: str,
        r: Model,
        data: Upload,
        classes: Annotated[list[str], Query(max_length=MAX_CLASSES, description="class names, two or more")],
        templates: Annotated[
            list[str] | None, Query(max_length=MAX_TEMPLATES, description="prompt templates with one {} each")
        ] = None,
    ) -> ClassifyResult:
        """Zero-shot classes of an uploaded image among `classes` (default templates: configs/prompts.yaml)."""
        if any(len(c) > MAX_QUERY_CHARS for c in [*classes, *(templates or [])]):
            raise HTTPException(422, f"classes and templates are at most {MAX_QUERY_CHARS} characters each")
        if len(classes) * len(templates or r.default_templates) > MAX_PROMPTS:
            raise HTTPException(422, f"classes x templates make more than {MAX_PROMPTS} prompts: give fewer")
        img, square = await decoded(r, data)

        def run() -> ClassifyResult:
            embedding = r.embed_squares(square[None])
            result = checked(lambda: r.classify_embeddings(embedding, classes, templates)[0])
            used = templates or r.default_templates
            names = [c.strip() for c in classes]
            unknown = r.unknown_words([*names, *(t.replace("{}", " ") for t in used)])
            return ClassifyResult(
                model=model,
                query=upload_query(img, data),
                classes=names,
                templates=used,
                unknown_words=unknown,
                result=result,
            )

        return await on_model(run)

    @app.get("/api/models/{model}/examples", response_model=Examples, tags=["gallery"])
    def examples(model: str, r: Model, n: Annotated[int, Query(ge=1, le=MAX_K)] = 4) -> Examples:
        """Captions of the gallery to try as queries: the first caption of `n` images spread over the split."""
        start, split = r.split.caption_start, r.split
        captioned = [i for i in range(len(split.image_ids)) if start[i + 1] > start[i]]
        picks = [captioned[j * len(captioned) // n] for j in range(min(n, len(captioned)))]
        return Examples(captions=[split.captions[start[i]] for i in picks])

    @app.get("/api/models/{model}/gallery/{image_id}", response_model=GalleryImage, tags=["gallery"])
    def gallery_image(model: str, r: Model, image_id: int) -> GalleryImage:
        """An image of the gallery: its file name and captions."""
        row = checked(lambda: r.row(image_id))
        return GalleryImage(image_id=image_id, file_name=r.split.file_names[row], captions=r.image_captions(image_id))

    @app.get("/api/models/{model}/gallery/{image_id}/thumbnail", tags=["gallery"], response_class=Response)
    def thumbnail(
        model: str,
        r: Model,
        image_id: int,
        size: Annotated[int, Query(ge=THUMB_SIZES[0], le=THUMB_SIZES[1])] = 256,
    ) -> Response:
        """The image's central square as a JPEG, from its file in the split (else its image cache row)."""

        key = (r.split.fingerprint, image_id, size)  # two models of one split share their pictures
        with thumbnails_lock:
            data = thumbnails.items.get(key)
        if data is None:  # made outside the lock: thumbnails of other images are made meanwhile
            out = io.BytesIO()
            Image.fromarray(checked(lambda: r.picture(image_id, size))).save(out, "JPEG", quality=85)
            data = out.getvalue()
            with thumbnails_lock:
                thumbnails.get(key, lambda: data)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "public, max-age=3600"})

    if hosts is not None:
        from starlette.middleware.trustedhost import TrustedHostMiddleware

        app.add_middleware(TrustedHostMiddleware, allowed_hosts=hosts)
    app.state.retrievers = retrievers
    return app


def load_retrievers(
    paths: list[str],
    split: str | None,
    spec: IndexSpec,
    device: str | None,
    config: list[str] | None = None,
    **data: Any,
):
    """One Retriever per checkpoint or pretrained model, by model_names, with both galleries embedded (cached on
    disk) and the text encoder warmed up, so that the first request is as fast as the others. `config`: the
    pretrained models' data settings (fit configs); a trained checkpoint carries its own."""
    retrievers = {}
    for name, path in zip(model_names(paths), paths):
        configs = config if is_pretrained_name(path) else None
        r = Retriever(open_checkpoint(path, device, config=configs, **data), split, spec)
        t0 = time.perf_counter()
        r.warm()
        log.info(
            "model %s: %s, %d images and %d captions of %s ready in %.1f s",
            name,
            path,
            len(r.images),
            len(r.captions),
            r.split.name,
            time.perf_counter() - t0,
        )
        retrievers[name] = r
    return retrievers


@contextmanager
def running(app: Any, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """The app served by uvicorn in a background thread while the block runs (port 0: a free one); yields its URL.
    For the benchmark, the tests and notebooks: `serve` itself runs uvicorn in the foreground."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="clip_lab serve", daemon=True)
    thread.start()
    try:
        while not server.started:
            if not thread.is_alive():
                raise ClipLabError(f"the server did not start on {host}:{port} (is the port taken?)")
            time.sleep(0.01)
        bound = server.servers[0].sockets[0].getsockname()
        yield f"http://{host}:{bound[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def main(argv: list[str] | None = None) -> None:
    parser = JobParser(prog="python -m clip_lab serve", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--ckpt_path",
        "--ckpt",
        dest="ckpt_path",
        nargs="+",
        action="extend",
        required=True,
        help="one or more models (repeat the flag or list them), each a "
        + CKPT_HELP
        + "; e.g. results/baseline/checkpoints/best.ckpt hf:openai/clip-vit-base-patch32: the page shows two side by "
        "side",
    )
    parser.add_argument("--split", default=None, help="gallery split (default: each checkpoint's test split)")
    parser.add_argument("--index", choices=KINDS, default="exact", help="exact, or FAISS HNSW (approximate)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (0: a free one)")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    add_data_args(parser)
    args = parser.parse_args(argv)

    if not 0 <= args.port <= 65535:
        raise ClipLabError(f"--port must be 0-65535, not {args.port}")
    require_fastapi()
    import uvicorn

    spec = IndexSpec(args.index)
    spec.check()
    sock = listen(args.host, args.port)  # a taken port fails now, not after the models have loaded
    retrievers = load_retrievers(args.ckpt_path, args.split, spec, args.device, args.config, **data_flags(args))
    loopback = args.host in LOOPBACK
    hosts = [*LOOPBACK, "[::1]"] if loopback else None
    if not loopback:
        log.warning("listening on %s: whoever reaches this machine can use the server (no authentication)", args.host)
    host = f"[{args.host}]" if ":" in args.host else args.host
    url = f"http://{host}:{sock.getsockname()[1]}"
    print(f"clip_lab serve: {url}/ (the page), {url}/docs (the API); Ctrl-C stops")
    uvicorn.Server(uvicorn.Config(build_app(retrievers, hosts), log_level="warning")).run(sockets=[sock])


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to (host, port), listening; one ClipLabError line when the address is taken or unknown."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn sets it
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as e:
        raise ClipLabError(
            f"cannot listen on {host}:{port} ({e.strerror}): another server may hold the port; pass another "
            "--port (0 picks a free one)"
        ) from e
    return sock
