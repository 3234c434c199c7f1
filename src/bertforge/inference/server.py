"""`bertforge serve`: the pipelines over HTTP (FastAPI + uvicorn), with a web page and metrics.

Endpoints (only those the model supports are mounted): POST /fill-mask, /embed, /classify, /ner, /qa,
/attention; GET /health, /metrics (Prometheus text format), /info, /docs, /redoc and /openapi.json (the docs
pages' scripts served from /docs-assets, so they work offline), / (the page: a view per task of the model); and
OpenAI's POST /v1/embeddings and GET /v1/models (openai_api.py, with OpenAI's error shape under /v1).
Bad input never reaches the model: oversize bodies (counted as they stream in), too many texts or too long
texts answer 413; a body that does not arrive in time 408; malformed JSON, wrong types, empty lists, texts
without [MASK] answer 422; a full queue or a timed-out request 503 — every error is JSON
{"error": ..., "detail": ...}. Slow or idle connections are closed and their number is capped (`guards.py`,
`uvicorn_config`), so a few greedy clients cannot starve the rest.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Hashable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from bertforge.errors import BertforgeError, OptionError
from bertforge.inference import pipelines
from bertforge.inference.batcher import MicroBatcher, Overloaded
from bertforge.inference.pipelines import Loaded, PipelineError
from bertforge.precision import InferencePrecision

if TYPE_CHECKING:
    from bertforge.inference.metrics import BatcherSnapshot, Metrics

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"
DOCS_ASSETS = "/docs-assets"  # where /docs and /redoc load Swagger UI and ReDoc from (no CDN)


@dataclass(frozen=True)
class LoadSettings:
    """The model and where it runs.

    Args:
        model: Model directory (its architecture decides the endpoints), or all-minilm-l6-v2.
        device: auto (a GPU if there is one; the CPU for int8), cpu, cuda, cuda:1, mps, ...
        threads: torch CPU threads (default: torch's choice).
        precision: fp32, bf16 (a bf16 copy of the encoder; GPUs and CPUs with native bf16), fp16, int8 (a
            dynamically quantised copy; CPU, slightly different numbers) or auto.
    """

    model: str
    device: str = "auto"
    threads: int | None = None
    precision: InferencePrecision = "fp32"


@dataclass(frozen=True)
class BindSettings:
    """Where the service listens.

    Args:
        host: Interface to bind; the default answers this machine only.
        port: TCP port.
    """

    host: str = "127.0.0.1"
    port: int = 8000


@dataclass(frozen=True)
class BatchSettings:
    """Micro-batching: concurrent requests share one model call.

    Args:
        max_queue: Most requests waiting for the model (503 beyond).
        max_wait_ms: How long a micro-batch waits for more requests.
        max_batch_texts: Most texts in one model call.
    """

    max_queue: int = 256
    max_wait_ms: float = 5.0
    max_batch_texts: int = 128


@dataclass(frozen=True)
class Limits:
    """What one request may ask for, how long it may take, and what one client may hold.

    Args:
        max_texts: Most texts per request (413 beyond).
        max_chars: Most characters per text (413 beyond).
        max_body_bytes: Largest request body, counted as it arrives, chunked or not (413 beyond).
        timeout_s: Per-request limit, queue included (503 beyond).
        head_timeout_s: Time for a request's headers to arrive, from connecting or from the previous response
            (the connection is closed beyond).
        body_timeout_s: Time for the whole request body to arrive once the headers are in (408 beyond).
        keep_alive_s: An idle keep-alive connection is closed after this many seconds.
        max_connections: Most open connections, idle ones included; requests beyond get 503 at once.
        max_header_bytes: Largest request line plus headers (400 beyond).
    """

    max_texts: int = 64  # texts (or question/context pairs) per request
    max_chars: int = 10_000
    max_body_bytes: int = 1_000_000
    timeout_s: float = 30.0
    head_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    keep_alive_s: float = 5.0
    max_connections: int = 512  # counts idle connections too, so a client cannot hoard them
    max_header_bytes: int = 16_384


def require_serve_extra() -> None:
    """Fail in one line, not an ImportError traceback, when the `serve` extra is not installed."""
    try:
        import fastapi  # noqa: F401
        import fastapi_offline  # noqa: F401
        import prometheus_client  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise BertforgeError(f"`bertforge serve` needs {exc.name or 'fastapi and uvicorn'}, which is not "
                             "installed: pip install 'bertforge[serve]'") from None


# ----- request bodies (unknown fields are errors) ---------------------------------------------------------
class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class TextsIn(_Body):
    texts: list[str] = Field(min_length=1, description="Texts to process, in order.")


class FillMaskIn(TextsIn):
    top_k: int = Field(5, ge=1, le=50)


class EmbedIn(TextsIn):
    normalize: bool | None = Field(None, description="Unit-length vectors; default the model folder's own "
                                   "(a Normalize module in its modules.json), else false.")


class ClassifyIn(TextsIn):
    pairs: list[str] | None = Field(None, description="Optional second text per text (sentence pairs).")


class QAIn(_Body):
    questions: list[str] = Field(min_length=1)
    contexts: list[str] = Field(min_length=1)
    # Left out: the settings the model was fine-tuned with (its config.json), else those of `bertforge qa`.
    max_length: int | None = Field(None, ge=8, description="Tokens per window (capped to the model's).")
    stride: int | None = Field(None, ge=1, description="Tokens between the starts of consecutive windows.")
    max_answer_length: int | None = Field(None, ge=1, description="Longest answer, in tokens.")


class AttentionIn(_Body):
    text: str = Field(min_length=1, description="A text, or a question when `pair` holds the passage.")
    pair: str | None = None
    layer: int = Field(0, ge=0)
    head: int = Field(0, ge=0)


class ApiError(Exception):
    def __init__(self, status: int, error: str, detail: Any = None) -> None:
        super().__init__(error)
        self.status, self.error, self.detail = status, error, detail


# ----- the model side ---------------------------------------------------------------------------------------
def _run_batch(loaded: Loaded, key: Hashable, items: list) -> list:
    """One micro-batch on the model thread: key = (task, option, ...), items = texts or (question, context)."""
    predictor = loaded.predictor
    task = key[0]
    if task == "fill-mask":
        return pipelines.fill_mask(predictor, items, top_k=key[1])
    if task == "embed":  # key = ("embed", pooling, normalize, input kind)
        return pipelines.embed(predictor, items, pooling=key[1], normalize=key[2]).tolist()
    if task == "classify":
        texts = [t for t, _ in items]
        pairs = [p for _, p in items] if key[1] else None
        return pipelines.classify(predictor, texts, pairs)
    if task == "ner":
        return pipelines.ner(predictor, items)
    if task == "qa":  # key = ("qa", max_length, stride, max_answer_length)
        return pipelines.qa(predictor, [q for q, _ in items], [c for _, c in items], max_length=key[1],
                            stride=key[2], max_answer_length=key[3])
    raise ValueError(f"unknown task {task!r}")


@torch.inference_mode()
def attention_map(loaded: Loaded, text: str, pair: str | None, layer: int, head: int) -> dict:
    """Tokens and the [T, T] attention probabilities of one layer and head (plain padded forward)."""
    predictor = loaded.predictor
    enc = predictor.tokenize([text], [pair] if pair is not None else None, max_length=128)
    tensors = {k: torch.tensor(v) for k, v in (("input_ids", enc.input_ids), ("token_type_ids", enc.token_type_ids))}
    out = predictor.encoder(tensors["input_ids"], None, tensors["token_type_ids"], output_attentions=True)
    probs = out.attentions[layer][0, head]  # [T, T]
    return {"tokens": [predictor.tokenizer.id_to_token(i) for i in enc.input_ids[0]], "layer": layer,
            "head": head, "attention": [[round(float(p), 5) for p in row] for row in probs]}


# ----- the app ----------------------------------------------------------------------------------------------
@dataclass
class _Service:
    """What every route shares: the loaded model, the limits, and the micro-batcher the app's lifespan runs."""

    loaded: Loaded
    limits: Limits
    batching: BatchSettings
    batcher: MicroBatcher | None = None  # None outside the app's lifespan

    @asynccontextmanager
    async def lifespan(self, app):
        batching = self.batching
        self.batcher = MicroBatcher(lambda key, items: _run_batch(self.loaded, key, items),
                                    max_items=batching.max_batch_texts, max_wait_s=batching.max_wait_ms / 1000,
                                    max_queue=batching.max_queue)
        self.batcher.start()
        yield
        await self.batcher.stop()

    def batcher_now(self) -> BatcherSnapshot:
        """The queue depth and batch counters for /metrics (zeros before the batcher starts)."""
        from bertforge.inference.metrics import BatcherSnapshot

        if self.batcher is None:
            return BatcherSnapshot()
        return BatcherSnapshot(self.batcher.depth(), self.batcher.stats.batches, self.batcher.stats.items)

    def check_texts(self, texts: list[str], what: str = "texts") -> None:
        """413 for too many or too long texts, 422 for an empty one, before anything reaches the model."""
        limits = self.limits
        if len(texts) > limits.max_texts:
            raise ApiError(413, f"{len(texts)} {what} in one request; the limit is {limits.max_texts}")
        for i, t in enumerate(texts):
            if len(t) > limits.max_chars:
                raise ApiError(413, f"{what}[{i}] has {len(t)} characters; the limit is {limits.max_chars}")
            if not t.strip():
                raise ApiError(422, f"{what}[{i}] is empty")

    async def batched(self, key: Hashable, items: list) -> list:
        """The model's answers for `items`, micro-batched with other requests of the same `key`."""
        try:
            return await asyncio.wait_for(self.batcher.submit(key, items), self.limits.timeout_s)
        except Overloaded as exc:
            raise ApiError(503, "server overloaded, retry later", str(exc)) from None
        except TimeoutError:
            raise ApiError(503, f"request timed out after {self.limits.timeout_s} s") from None
        except (PipelineError, OptionError) as exc:  # e.g. a question that leaves a window no room for context
            raise ApiError(422, str(exc)) from None


def create_app(loaded: Loaded, *, limits: Limits = Limits(), batching: BatchSettings = BatchSettings(),
               name: str | None = None):
    """The FastAPI application for one loaded model (`app.state.limits` holds `limits` for `uvicorn_config`).
    `name` is the model's name in the OpenAI API (default: its folder's name)."""
    require_serve_extra()
    from fastapi_offline import FastAPIOffline

    from bertforge.inference.guards import RequestGuard
    from bertforge.inference.metrics import Metrics

    service = _Service(loaded, limits, batching)
    metrics = Metrics(service.batcher_now)
    # FastAPI's /docs and /redoc load their scripts from a CDN, blank offline; FastAPIOffline serves the same
    # Swagger UI and ReDoc files from its package, under DOCS_ASSETS.
    app = FastAPIOffline(title="bertforge", version="0.1.0", lifespan=service.lifespan, static_url=DOCS_ASSETS,
                         description=f"{loaded.architecture} from {loaded.directory}; tasks: {', '.join(loaded.tasks)}")
    app.state.limits = limits
    # Outside FastAPI's own exception handling: it reads every body (413/408), labels metrics by route, and is
    # the one place an unexpected exception is logged (once) and answered 500.
    app.add_middleware(RequestGuard, routes=app.router.routes, max_body_bytes=limits.max_body_bytes,
                       body_timeout_s=limits.body_timeout_s, observe=metrics.observe)
    _add_error_handlers(app)
    _add_service_routes(app, service, metrics)
    _add_task_routes(app, service, openai_name=name or loaded.directory.name)
    _add_attention_route(app, service)
    return app


def _add_error_handlers(app) -> None:
    """Every error as JSON {"error", "detail"}; under /v1 in OpenAI's shape, which OpenAI clients read."""
    from fastapi import Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from bertforge.inference import openai_api

    def error(request: Request, status: int, message: str, detail: Any = None) -> JSONResponse:
        if request.url.path.startswith(openai_api.PREFIX):
            return openai_api.error_response(status, message, detail)
        return JSONResponse({"error": message, "detail": detail}, status_code=status)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return error(request, exc.status, exc.error, exc.detail)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        detail = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", "")} for e in exc.errors()]
        return error(request, 422, "invalid request body", detail)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 400:  # FastAPI's answer to a body it cannot decode (e.g. not UTF-8)
            return error(request, 422, "request body is not valid UTF-8 JSON", str(exc.detail))
        return error(request, exc.status_code, str(exc.detail))


def _add_service_routes(app, service: _Service, metrics: Metrics) -> None:
    """GET /health, /info, /metrics and / (the web page): the service itself, not the model's tasks."""
    from fastapi.responses import FileResponse, Response

    loaded, config = service.loaded, service.loaded.predictor.encoder.config

    @app.get("/health")
    async def health() -> dict:
        batcher = service.batcher
        return {"status": "ok", "queue": batcher.depth() if batcher else 0, "tasks": list(loaded.tasks)}

    @app.get("/info")
    async def info() -> dict:
        """What the web page needs: the model's tasks, its views (the tasks and the attention map every encoder
        has), its size, and the mask token (null without an MLM head, so no page asks for a [MASK])."""
        tok = loaded.predictor.tokenizer
        mask_token = tok.id_to_token(tok.mask_id) if "fill-mask" in loaded.tasks else None
        return {"architecture": loaded.architecture, "tasks": list(loaded.tasks),
                "views": [*loaded.tasks, "attention"], "num_layers": config.num_layers,
                "num_heads": config.num_heads, "hidden_size": config.hidden_size,
                "mask_token": mask_token, "limits": {**asdict(service.limits), **asdict(service.batching)}}

    @app.get("/metrics", response_class=Response)
    async def prometheus():
        return Response(metrics.render(), media_type=metrics.content_type)

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html")


def _add_task_routes(app, service: _Service, *, openai_name: str) -> None:
    """POST /fill-mask, /embed (with OpenAI's /v1 routes), /classify, /ner, /qa: those the model supports."""
    from bertforge.inference import openai_api

    loaded, check_texts, batched = service.loaded, service.check_texts, service.batched

    if "fill-mask" in loaded.tasks:
        @app.post("/fill-mask")
        async def fill_mask(body: FillMaskIn) -> list:
            """Top-k tokens for every [MASK] of every text."""
            check_texts(body.texts)
            for i, t in enumerate(body.texts):
                if "[MASK]" not in t:
                    raise ApiError(422, f"texts[{i}] has no [MASK]")
            return await batched(("fill-mask", body.top_k), body.texts)

    if "embed" in loaded.tasks:
        @app.post("/embed")
        async def embed(body: EmbedIn) -> list:
            """One vector per text, pooled as the model folder says (modules.json; else the tokens' mean)."""
            check_texts(body.texts)
            settings = loaded.sentence.with_options(normalize=body.normalize)
            return await batched(("embed", settings.pooling, settings.normalize, "text"), body.texts)

        openai_api.add_openai_routes(app, loaded, name=openai_name, limits=service.limits,
                                     batched=batched, check_texts=check_texts)

    if "classify" in loaded.tasks:
        @app.post("/classify")
        async def classify(body: ClassifyIn) -> list:
            """Label and probabilities per text (pair)."""
            check_texts(body.texts)
            if body.pairs is not None:
                if len(body.pairs) != len(body.texts):
                    raise ApiError(422, f"{len(body.texts)} texts but {len(body.pairs)} pairs")
                check_texts(body.pairs, "pairs")
            items = list(zip(body.texts, body.pairs or [None] * len(body.texts), strict=True))
            return await batched(("classify", body.pairs is not None), items)

    if "ner" in loaded.tasks:
        @app.post("/ner")
        async def ner(body: TextsIn) -> list:
            """Entities with character spans per text."""
            check_texts(body.texts)
            return await batched(("ner",), body.texts)

    if "qa" in loaded.tasks:
        @app.post("/qa")
        async def qa(body: QAIn) -> list:
            """The best answer span per (question, context)."""
            if len(body.questions) != len(body.contexts):
                raise ApiError(422, f"{len(body.questions)} questions but {len(body.contexts)} contexts")
            check_texts(body.questions, "questions")
            check_texts(body.contexts, "contexts")
            key = ("qa", body.max_length, body.stride, body.max_answer_length)
            return await batched(key, list(zip(body.questions, body.contexts, strict=True)))


def _add_attention_route(app, service: _Service) -> None:
    """POST /attention, for every model: one layer and head's attention map, as the web page draws it."""
    config, limits = service.loaded.predictor.encoder.config, service.limits

    @app.post("/attention")
    async def attention(body: AttentionIn) -> dict:
        """Attention probabilities of one layer and head for one text (first 128 tokens)."""
        service.check_texts([body.text] + ([body.pair] if body.pair is not None else []), "text")
        if body.layer >= config.num_layers or body.head >= config.num_heads:
            raise ApiError(422, f"layer must be < {config.num_layers} and head < {config.num_heads}")
        return await asyncio.wait_for(
            service.batcher.run_alone(
                lambda: attention_map(service.loaded, body.text, body.pair, body.layer, body.head)),
            limits.timeout_s)


def uvicorn_config(app, bind: BindSettings = BindSettings(), *, log_level: str = "warning"):
    """uvicorn's settings for an app from `create_app`, with the connection limits of its `Limits`."""
    import uvicorn

    from bertforge.inference.guards import HeadDeadlineH11

    limits: Limits = app.state.limits
    return uvicorn.Config(
        app, host=bind.host, port=bind.port, log_level=log_level,
        http=partial(HeadDeadlineH11, head_timeout_s=limits.head_timeout_s),
        limit_concurrency=limits.max_connections,  # counts open connections and running requests: 503 beyond
        timeout_keep_alive=limits.keep_alive_s,
        h11_max_incomplete_event_size=limits.max_header_bytes)


def run(loading: LoadSettings, bind: BindSettings = BindSettings(), batching: BatchSettings = BatchSettings(),
        limits: Limits = Limits()) -> None:
    """Serve a model's pipelines over HTTP, with a web page at / and OpenAPI docs at /docs.

    Args:
        loading: The model, its device, precision and threads (LoadSettings).
        bind: The interface and port (BindSettings).
        batching: How concurrent requests are gathered into model calls (BatchSettings).
        limits: What one request and one client may use (Limits).
    """
    require_serve_extra()
    import uvicorn

    if loading.threads:
        torch.set_num_threads(loading.threads)
    loaded = pipelines.load_pipeline(loading.model, device=loading.device, precision=loading.precision)
    if bind.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("binding %s: the service has no authentication; anyone who can reach it can use it", bind.host)
    app = create_app(loaded, limits=limits, batching=batching, name=loading.model)
    uvicorn.Server(uvicorn_config(app, bind)).run()
