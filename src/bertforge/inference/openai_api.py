"""OpenAI-compatible embeddings for `bertforge serve`: `POST /v1/embeddings`, `GET /v1/models`.

The official `openai` client, and the many tools built on it, then use a bertforge service as they use OpenAI:

    client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="unused")
    client.embeddings.create(model="all-minilm-l6-v2", input=["A man is playing a guitar."])

- The vectors are the model folder's own sentence embedding (sentence.py: its pooling and normalisation), the
  same as `/embed` with default options, and they share its micro-batches.
- `input`: a text, a list of texts, or token ids of the model's own WordPiece vocabulary (a list, or a list of
  lists; [CLS] and [SEP] are added). usage counts the tokens embedded, [CLS] and [SEP] included.
- `encoding_format`: "float", or "base64" of little-endian float32 bytes (what the openai client asks for
  unless told otherwise).
- `dimensions`: only the model's own size; these models were not trained to have their vectors shortened.
- `model`: the name the service was started with (`GET /v1/models`); another name is a 404.
Errors under /v1 take OpenAI's shape, {"error": {"message", "type", "param", "code"}}, and an invalid request
is a 400 as there (the rest of the service answers 422).
"""

from __future__ import annotations

import base64
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from bertforge.errors import BertforgeError
from bertforge.inference.embed import encode_inputs
from bertforge.inference.pipelines import Loaded
from bertforge.inference.server import ApiError, Limits

PREFIX = "/v1/"


class EmbeddingsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input: str | list[str] | list[int] | list[list[int]] = Field(
        description="A text, a list of texts, or token ids of this model's vocabulary (a list or a list of lists).")
    model: str = Field(description="The served model's name (GET /v1/models).")
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, description="Only the model's own hidden size is accepted.")
    user: str | None = Field(None, description="Accepted for compatibility; not used.")


def error_response(status: int, message: str, detail: Any = None):
    """An error in OpenAI's shape. An invalid request is a 400 there; `detail` may name the `param` and `code`
    (a dict) or hold pydantic's validation errors (a list of {loc, msg})."""
    from fastapi.responses import JSONResponse

    param = code = None
    if isinstance(detail, dict):
        param, code = detail.get("param"), detail.get("code")
    elif isinstance(detail, list) and detail:
        where = [str(part) for part in detail[0].get("loc", ()) if part != "body"]
        param = where[0] if where else None
        message = f"{message}: {'.'.join(where) or 'body'}: {detail[0].get('msg', '')}"
    status = 400 if status == 422 else status
    kind = "invalid_request_error" if status < 500 else "server_error"
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status)


def add_openai_routes(app, loaded: Loaded, *, name: str, limits: Limits,
                      batched: Callable[[tuple, list], Awaitable[list]],
                      check_texts: Callable[[list[str], str], None]) -> None:
    """Mount /v1/embeddings and /v1/models on `app` for the model served as `name`."""
    created = int(time.time())
    predictor = loaded.predictor
    hidden_size = predictor.encoder.config.hidden_size

    def model_card() -> dict:
        return {"id": name, "object": "model", "created": created, "owned_by": "bertforge"}

    @app.get("/v1/models")
    async def models() -> dict:
        """The served model, as OpenAI lists models."""
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str) -> dict:
        if model_id != name:
            raise ApiError(404, f"the model {model_id!r} does not exist here; this service serves {name!r}",
                           {"param": "model", "code": "model_not_found"})
        return model_card()

    @app.post("/v1/embeddings")
    async def embeddings(body: EmbeddingsIn) -> dict:
        """OpenAI's embeddings API over the model folder's own sentence embedding."""
        if body.model != name:
            raise ApiError(404, f"the model {body.model!r} does not exist here; this service serves {name!r} "
                           "(GET /v1/models)", {"param": "model", "code": "model_not_found"})
        if body.dimensions is not None and body.dimensions != hidden_size:
            raise ApiError(400, f"dimensions {body.dimensions}: this model gives {hidden_size}-dimensional vectors "
                           "and cannot shorten them; leave dimensions out", {"param": "dimensions"})
        items = _items(body.input, limits, check_texts)
        try:
            tokens = sum(len(ids) for ids in encode_inputs(predictor.tokenizer, items, predictor.max_length).input_ids)
        except BertforgeError as exc:  # token ids outside the vocabulary
            raise ApiError(400, str(exc), {"param": "input"}) from None
        settings = loaded.sentence
        kind = "text" if isinstance(items[0], str) else "ids"  # a micro-batch holds one kind of input
        vectors = await batched(("embed", settings.pooling, settings.normalize, kind), items)
        data = [{"object": "embedding", "index": i, "embedding": _encoded(v, body.encoding_format)}
                for i, v in enumerate(vectors)]
        return {"object": "list", "data": data, "model": name,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


def _items(given: str | list, limits: Limits, check_texts: Callable[[list[str], str], None]) -> list:
    """`input` as a list of texts or a list of token-id lists, within the service's limits."""
    if isinstance(given, str):
        given = [given]
    elif given and isinstance(given[0], int):
        given = [given]  # one token array
    if not given:
        raise ApiError(400, "input is empty; give a text, a list of texts or token ids", {"param": "input"})
    if isinstance(given[0], str):
        check_texts(given, "input")
        return given
    if len(given) > limits.max_texts:
        raise ApiError(413, f"{len(given)} inputs in one request; the limit is {limits.max_texts}", {"param": "input"})
    for i, ids in enumerate(given):
        if not ids:
            raise ApiError(400, f"input[{i}] is an empty list of token ids", {"param": "input"})
    return given


def _encoded(vector: list[float], encoding_format: str) -> list[float] | str:
    if encoding_format == "float":
        return vector
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
