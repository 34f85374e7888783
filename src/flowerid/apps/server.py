"""Web service: a phone-friendly page and a JSON API over one loaded Classifier.

`create_app(classifier)` builds a FastAPI app that shares one Classifier across
requests and runs decoding and inference in a small thread pool, so the event
loop keeps answering while a photo is being named. Uploads are counted while
they arrive and refused (413) as soon as they pass the limit; every bad request
gets a JSON 4xx of the form {"error": code, "detail": message}. Who may ask at all
(the token, the rate limit) is decided around every route at once, in `access.py`.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import AsyncIterator
from http import HTTPStatus
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, Field
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect

from .._text import first_line
from .._version import __version__
from ..data.images import load_image, max_pixels_default
from ..errors import DataError, DecompressionBombError, ImageError, NotAnImageError, OutputError, UsageError
from ..model.builtin import names_flowers
from ..model.predictor import Classifier, Prediction, photo_fields
from .access import protect
from .serve_config import ServeConfig

if TYPE_CHECKING:
    pass

FIELD = "file"


class Rejected(Exception):
    """A bad request, answered with `status` and a JSON body {"error": code, "detail": message}."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail


class PredictionOut(BaseModel):
    category: str
    name: str | None
    probability: float


class ExplanationOut(BaseModel):
    category: str = Field(description="the category explained: the top one")
    grid: list[list[float]] = Field(description="the category's logit contribution per cell of the last feature map")
    box: list[float] = Field(description="x0, y0, x1, y1: the part of the photo (its pixels, EXIF-rotated) it covers")
    logit: float
    bias: float = Field(description="mean(grid) + bias == logit")
    exact: bool = Field(description="false: a head with a hidden layer, whose map is Grad-CAM's")


class PredictResponse(BaseModel):
    known: bool | None = Field(
        description="false: the photo does not look like any category the model knows "
        "(the predictions are only the closest ones); null: this model cannot tell"
    )
    unknown_score: float | None = Field(description="higher: less like anything the model was trained on")
    predictions: list[PredictionOut]
    unsure: bool = Field(description="a category it knows, but the best guess is under the unsure threshold")
    model: dict[str, Any]
    explanation: ExplanationOut | None = Field(None, description="with explain=1: why the top category")


class ErrorResponse(BaseModel):
    error: str
    detail: str


def _mb(n: int) -> str:
    return f"{n / (1024 * 1024):g} MB"


def model_info(clf: Classifier, config: ServeConfig, checkpoint: str | os.PathLike | None = None) -> dict[str, Any]:
    """What a client may want to know about the model; no server paths beyond the file name."""
    metrics = clf.checkpoint.get("metrics") or {}
    info: dict[str, Any] = {
        "backbone": clf.spec.name,
        "num_classes": clf.num_classes,
        "valid_acc": metrics.get("valid_acc"),
        "trained_at": clf.checkpoint.get("created"),
        "checkpoint": Path(checkpoint).name if checkpoint else None,
        "flowerid_version": __version__,
        "unsure_below": config.unsure_below,
        "tells_unknown": clf.unknown is not None,
        "takes_corrections": config.corrections is not None,
        "subject": "flower" if names_flowers(clf.categories, clf.names) else "any",  # the page's words
    }
    return info


async def _limited(stream: AsyncIterator[bytes], limit: int) -> AsyncIterator[bytes]:
    """Pass chunks through, refusing with 413 the moment the total passes `limit`."""
    total = 0
    async for chunk in stream:
        total += len(chunk)
        if total > limit:
            raise Rejected(413, "upload_too_large", f"the upload is over the {_mb(limit)} limit; send a smaller photo")
        yield chunk


async def read_upload(request: Request, limit: int) -> bytes:
    """The image bytes of a request: a multipart field `file`, or else the raw body.

    A client that goes away mid-upload (a phone leaving the Wi-Fi, a closed tab) is not the
    server's error: one short log line, no traceback, and an answer no one will read.
    """
    try:
        return await _read_upload(request, limit)
    except ClientDisconnect:
        logging.getLogger("uvicorn.error").info("a client left before its upload ended; dropped")
        raise Rejected(400, "upload_cut_off", "the connection closed before the upload ended") from None


async def _read_upload(request: Request, limit: int) -> bytes:
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise Rejected(413, "upload_too_large", f"the upload is over the {_mb(limit)} limit; send a smaller photo")
    stream = _limited(request.stream(), limit)
    ctype = request.headers.get("content-type", "").lower()
    if ctype.startswith("application/x-www-form-urlencoded"):
        raise Rejected(
            400,
            "missing_file",
            f"a url-encoded form cannot carry a photo; send multipart/form-data with a field {FIELD!r}",
        )
    if ctype.startswith("multipart/form-data"):
        try:
            form = await MultiPartParser(request.headers, stream, max_files=4, max_fields=16).parse()
        except MultiPartException as exc:
            raise Rejected(400, "bad_multipart", f"the multipart body cannot be read ({exc})") from None
        try:
            part = form.get(FIELD)
            if part is None:
                got = ", ".join(sorted(set(form.keys()))) or "none"
                raise Rejected(
                    400,
                    "missing_file",
                    f"the form has no field named {FIELD!r} (fields sent: {got}); put the photo there",
                )
            if not isinstance(part, UploadFile):
                raise Rejected(400, "missing_file", f"the field {FIELD!r} holds text, not a file; upload the photo")
            data = await part.read()
        finally:
            await form.close()
    else:
        data = b"".join([chunk async for chunk in stream])
    if not data:
        raise Rejected(
            400,
            "missing_file",
            f"no photo in the request: send multipart/form-data with a field {FIELD!r}, or the image as the body",
        )
    return data


#: On every answer: no MIME sniffing, no framing (clickjacking), no address sent on to other sites.
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
}
_SECURITY_RAW = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in SECURITY_HEADERS.items()]


class SecurityHeaders:
    """ASGI middleware, outermost: SECURITY_HEADERS on every answer, the gate's 401/429 and its redirect
    included, and `Cache-Control: no-store` on JSON (predictions and model details are not for caches)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": secured(message.get("headers", []))}
            await send(message)

        await self.app(scope, receive, with_headers)


def secured(headers: Any) -> list[tuple[bytes, bytes]]:
    """`headers` (raw ASGI pairs) with SECURITY_HEADERS set, and no-store in place of any caching of JSON."""
    mine = {k for k, _ in _SECURITY_RAW}
    out = [(k, v) for k, v in headers if k.lower() not in mine]
    ctype = next((v for k, v in out if k.lower() == b"content-type"), b"")
    if ctype.lower().startswith(b"application/json"):
        out = [(k, v) for k, v in out if k.lower() != b"cache-control"] + [(b"cache-control", b"no-store")]
    return out + _SECURITY_RAW


class HeadAsGet:
    """ASGI middleware: HEAD is answered as GET is, headers and all, without the body (RFC 9110).

    Monitors and link checkers ask `HEAD /health` and `HEAD /`; the routes are declared GET only.
    The inner app gets a copy of the scope, so the server still knows the request was HEAD.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def bodiless(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, bodiless)


def _http_error_body(request: Request, exc: StarletteHTTPException) -> dict[str, str]:
    """{"error": code, "detail": message} for a refusal raised by the router or static files."""
    try:
        code = HTTPStatus(exc.status_code).phrase.lower().replace(" ", "_").replace("-", "_")
    except ValueError:
        code = "http_error"
    path = request.url.path
    if exc.status_code == 404:
        detail = f"nothing at {path}; the API's addresses are listed at /docs"
    elif exc.status_code == 405:
        allowed = (exc.headers or {}).get("Allow") or (exc.headers or {}).get("allow") or "another method"
        detail = f"{path} does not take {request.method}; use {allowed}"
    else:
        detail = str(exc.detail)
    return {"error": code, "detail": detail}


def _image_rejection(exc: ImageError, max_pixels: int) -> Rejected:
    """The answer to a photo the loader refused, in the sender's terms.

    Too many pixels quotes this server's limit, not the loader's reason: that may quote Pillow's own
    limit and tells a CLI user to raise FLOWERID_MAX_PIXELS, which a remote sender cannot do.
    """
    if isinstance(exc, DecompressionBombError):
        return Rejected(
            413,
            "too_many_pixels",
            f"the photo is too large: this server takes photos of up to {max_pixels:,} pixels; send a smaller one",
        )
    if isinstance(exc, NotAnImageError):
        return Rejected(415, "not_an_image", "the upload is not an image Pillow can read (JPEG, PNG, WebP, ...)")
    return Rejected(422, "undecodable_image", f"the image cannot be decoded: {exc.reason}")


def create_app(
    classifier: Classifier,
    config: ServeConfig | None = None,
    checkpoint: str | os.PathLike | None = None,
) -> FastAPI:
    """The web app over one already-loaded classifier (loaded once, shared by every request)."""
    cfg = config or ServeConfig()
    info = model_info(classifier, cfg, checkpoint)
    labels = [{"category": c, "name": n} for c, n in zip(classifier.categories, classifier.names, strict=True)]
    limiter = anyio.CapacityLimiter(cfg.inference_threads)
    max_pixels = cfg.max_pixels if cfg.max_pixels is not None else max_pixels_default()
    min_size = classifier.preprocessing.resize_size
    page = _page_html()

    app = FastAPI(
        docs_url=None,  # served below from the bundled Swagger UI, so the docs work offline
        redoc_url=None,
        redirect_slashes=False,  # a redirect names the Host header's host: `/health/` for evil.example went there
        title="flowerid",
        version=__version__,
        summary="Name the flower in a photo.",
        description=(
            f"POST a photo to /predict (multipart field `{FIELD}`, or the raw image as the body). "
            f"Uploads over {_mb(cfg.max_upload_bytes)} are refused."
        ),
    )
    app.state.classifier = classifier
    app.state.config = cfg
    app.state.model_info = info

    @app.exception_handler(Rejected)
    async def _rejected(request: Request, exc: Rejected) -> JSONResponse:
        return JSONResponse({"error": exc.code, "detail": exc.detail}, status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # Starlette's own refusals (no such route, wrong method) in the API's one shape, not {"detail": ...}.
        return JSONResponse(_http_error_body(request, exc), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        # Starlette answers a bug outside every middleware: the API's shape and the headers set here.
        # The traceback still goes to the server's log; the client learns nothing of it.
        body = {"error": "internal_error", "detail": "the server failed on this request; its log says why"}
        response = JSONResponse(body, status_code=500)
        response.raw_headers[:] = secured(response.raw_headers)
        return response

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for err in exc.errors():
            where = ".".join(str(x) for x in err.get("loc", ()) if x not in ("query", "body"))
            parts.append(f"{where}: {err.get('msg')}" if where else str(err.get("msg")))
        return JSONResponse({"error": "invalid_request", "detail": "; ".join(parts)}, status_code=422)

    def _predict(data: bytes, top_k: int) -> list[Prediction]:
        # The one loader with this server's pixel limit, then the model's own preprocessing:
        # the same steps, and so the same numbers, as Classifier.predict on a file.
        image = load_image(data, min_size=min_size, max_pixels=max_pixels)
        probs, scores = classifier.forward(classifier.preprocessing(image)[None])
        return classifier.top_k(probs[0], top_k, None if scores is None else scores[0])

    def _explained(data: bytes, top_k: int) -> tuple[list[Prediction], dict[str, Any]]:
        # The same loader and limit as _predict; the spatial graph gives the answer and its map at once.
        array, box = classifier.explainer.of_image(load_image(data, min_size=min_size, max_pixels=max_pixels))
        done = classifier.explainer.explain_arrays([array], [box], top_k, 1)[0]
        return done.predictions, done.explanations[0].to_dict()

    _mount_docs(app)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page, headers={"Cache-Control": "no-cache"})

    @app.get("/health", summary="Liveness and the loaded model")
    async def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "model": info,
            "max_upload_bytes": cfg.max_upload_bytes,
            "max_pixels": max_pixels,
            "threads": cfg.inference_threads,
            "token_required": cfg.token is not None,
            "rate_limit_per_minute": cfg.rate_limit or None,
        }

    @app.get("/labels", summary="Every category the model knows, in the model's order")
    async def get_labels() -> dict[str, Any]:
        return {"labels": labels}

    bad = {"model": ErrorResponse}
    image_types = ("image/jpeg", "image/png", "image/webp", "application/octet-stream")

    @app.post(
        "/predict",
        response_model=PredictResponse,
        response_model_exclude_unset=True,  # `explanation` only when asked for
        summary="Name the flower in a photo",
        responses={400: bad, 413: bad, 415: bad, 422: bad},
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "multipart/form-data": {
                        "schema": {
                            "type": "object",
                            "required": [FIELD],
                            "properties": {FIELD: {"type": "string", "format": "binary"}},
                        }
                    },
                    **{t: {"schema": {"type": "string", "format": "binary"}} for t in image_types},
                },
            }
        },
    )
    async def predict(
        request: Request,
        top_k: int = Query(5, ge=1, description="how many categories to return"),
        explain: bool = Query(False, description="also return why: the top category's map over the photo"),
    ) -> dict[str, Any]:
        data = await read_upload(request, cfg.max_upload_bytes)
        extra: dict[str, Any] = {}
        try:
            if explain:
                preds, extra["explanation"] = await anyio.to_thread.run_sync(_explained, data, top_k, limiter=limiter)
            else:
                preds = await anyio.to_thread.run_sync(_predict, data, top_k, limiter=limiter)
        except ImageError as exc:
            raise _image_rejection(exc, max_pixels) from None
        return {
            **photo_fields(preds),
            "predictions": [p.to_dict() for p in preds],
            "unsure": preds[0].known is not False and preds[0].probability < cfg.unsure_below,
            "model": info,
            **extra,
        }

    @app.post(
        "/correct",
        summary='Keep a photo the model named wrong, under what it really is ("Not right?")',
        responses={400: bad, 404: bad, 413: bad, 415: bad, 422: bad, 507: bad},
    )
    async def correct(
        request: Request,
        category: str | None = Query(None, description="an existing category's id"),
        name: str | None = Query(None, description="or the name of a category the model does not know yet"),
    ) -> dict[str, Any]:
        if cfg.corrections is None:
            raise Rejected(
                404, "corrections_off", "this server keeps no corrections; start it with `serve --corrections DIR`"
            )
        data = await read_upload(request, cfg.max_upload_bytes)
        try:
            path = await anyio.to_thread.run_sync(_save_correction, data, category, name, limiter=limiter)
        except ImageError as exc:
            raise _image_rejection(exc, max_pixels) from None
        except UsageError as exc:
            raise Rejected(400, "bad_correction", str(exc)) from None
        except (OutputError, DataError) as exc:  # the owner's folder, not the sender's photo: say so there
            print(f"flowerid serve: a correction was not kept: {first_line(exc)}", file=sys.stderr, flush=True)
            raise Rejected(
                507,
                "not_saved",
                "the server could not keep the photo (a problem with its corrections folder, which its log names)",
            ) from None
        return {"saved": True, "category": path.parent.name}

    def _save_correction(data: bytes, category: str | None, name: str | None) -> Path:
        from .corrections import save_correction

        return save_correction(
            cfg.corrections or "",
            data,
            classifier.categories,
            classifier.names,
            category=category,
            name=name,
            min_size=min_size,
            max_pixels=max_pixels,
        )

    app.add_middleware(HeadAsGet)  # inside the gate, which answers a HEAD of the token link itself
    protect(app, cfg.token, cfg.rate_limit)  # around every route, those added above and any added later
    app.add_middleware(SecurityHeaders)  # outside the gate, so its refusals carry them too
    return app


def _mount_docs(app: FastAPI) -> None:
    """Swagger UI at /docs from the swagger-ui-bundle package: no CDN, so it works offline."""
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.staticfiles import StaticFiles
    from swagger_ui_bundle import swagger_ui_path

    app.mount("/docs-assets", StaticFiles(directory=swagger_ui_path), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="openapi.json",
            title="flowerid API",
            swagger_js_url="docs-assets/swagger-ui-bundle.js",
            swagger_css_url="docs-assets/swagger-ui.css",
            swagger_favicon_url="docs-assets/favicon-32x32.png",
        )


def _page_html() -> str:
    return resources.files("flowerid").joinpath("web/index.html").read_text(encoding="utf-8")
