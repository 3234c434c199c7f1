"""`POST /v1/embeddings` and `GET /v1/models` through the official `openai` client (its own request building,
base64 decoding and error classes), pointed at the app in-process with starlette's TestClient as its
httpx client: the vectors equal the folder's own sentence embedding, token arrays equal their text, usage counts
the tokens, and every refusal arrives in OpenAI's error shape."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest

openai = pytest.importorskip("openai", reason="pip install openai (in the test extra)")
pytest.importorskip("fastapi", reason="pip install fastapi uvicorn (the 'serve' extra)")

from starlette.testclient import TestClient  # noqa: E402

from bertforge.inference import pipelines  # noqa: E402
from bertforge.inference.server import Limits, create_app  # noqa: E402
from bertforge.inference.tiny import build  # noqa: E402
from bertforge.model import BertModel  # noqa: E402

TEXTS = ["john played the guitar in paris", "a good movie", "the night was new"]
NAME = "tiny-sentence-model"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The openai client, the loaded pipeline and the raw HTTP client of one app serving a mean-pooled,
    normalised (modules.json) tiny model."""
    directory: Path = tmp_path_factory.mktemp("st")
    build(BertModel, directory, seed=4)
    module = "sentence_transformers.models."
    (directory / "modules.json").write_text(json.dumps([
        {"path": "", "type": module + "Transformer"}, {"path": "1_Pooling", "type": module + "Pooling"},
        {"path": "2_Normalize", "type": module + "Normalize"}]))
    (directory / "1_Pooling").mkdir()
    (directory / "1_Pooling" / "config.json").write_text('{"pooling_mode_mean_tokens": true}')
    loaded = pipelines.load_pipeline(directory)
    with TestClient(create_app(loaded, limits=Limits(max_texts=4, max_chars=200), name=NAME)) as http:
        client = openai.OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=http, max_retries=0)
        yield client, loaded, http


def expected(loaded, items) -> np.ndarray:
    return pipelines.embed(loaded.predictor, items, pooling="mean", normalize=True)


def test_embeddings_equal_the_folders_sentence_embedding(served) -> None:
    client, loaded, _ = served
    response = client.embeddings.create(model=NAME, input=TEXTS)  # the client asks for base64 unless told
    assert response.object == "list" and response.model == NAME
    assert [(d.object, d.index) for d in response.data] == [("embedding", i) for i in range(len(TEXTS))]
    got = np.array([d.embedding for d in response.data])
    np.testing.assert_allclose(got, expected(loaded, TEXTS), atol=1e-6)
    tokens = sum(len(ids) for ids in loaded.predictor.tokenize(TEXTS).input_ids)  # [CLS] and [SEP] included
    assert (response.usage.prompt_tokens, response.usage.total_tokens) == (tokens, tokens)
    as_floats = client.embeddings.create(model=NAME, input=TEXTS[0], encoding_format="float", dimensions=96)
    assert len(as_floats.data) == 1
    np.testing.assert_allclose(as_floats.data[0].embedding, got[0], atol=1e-6)


def test_base64_is_little_endian_float32(served) -> None:
    _, loaded, http = served
    body = http.post("/v1/embeddings", json={"model": NAME, "input": TEXTS[:1], "encoding_format": "base64"}).json()
    vector = np.frombuffer(base64.b64decode(body["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_allclose(vector, expected(loaded, TEXTS[:1])[0], atol=1e-7)


def test_token_arrays_embed_like_their_text(served) -> None:
    client, loaded, _ = served
    ids = loaded.predictor.tokenizer.encode(TEXTS[:2], add_special_tokens=False).input_ids
    many = client.embeddings.create(model=NAME, input=ids, encoding_format="float")
    one = client.embeddings.create(model=NAME, input=ids[0], encoding_format="float")
    np.testing.assert_allclose([d.embedding for d in many.data], expected(loaded, TEXTS[:2]), atol=1e-6)
    np.testing.assert_allclose(one.data[0].embedding, many.data[0].embedding, atol=1e-7)
    assert many.usage.prompt_tokens == sum(len(x) + 2 for x in ids)


def test_models_lists_the_served_model(served) -> None:
    client, _, _ = served
    assert [m.id for m in client.models.list()] == [NAME]
    assert client.models.retrieve(NAME).owned_by == "bertforge"


@pytest.mark.parametrize(("name", "kwargs", "error", "status", "param"), [
    ("another model", {"model": "text-embedding-3-small", "input": "a"}, "NotFoundError", 404, "model"),
    ("shortened vectors", {"model": NAME, "input": "a", "dimensions": 32}, "BadRequestError", 400, "dimensions"),
    ("empty text", {"model": NAME, "input": "  "}, "BadRequestError", 400, None),
    ("empty list", {"model": NAME, "input": []}, "BadRequestError", 400, "input"),
    ("unknown token id", {"model": NAME, "input": [[5, 10**6]]}, "BadRequestError", 400, "input"),
    ("unknown format", {"model": NAME, "input": "a", "encoding_format": "int8"}, "BadRequestError", 400,
     "encoding_format"),
    ("too many texts", {"model": NAME, "input": ["a"] * 5}, "APIStatusError", 413, None),
])
def test_refusals_arrive_in_openais_error_shape(served, name, kwargs, error, status, param) -> None:
    client, _, http = served
    with pytest.raises(getattr(openai, error)) as caught:
        client.embeddings.create(**kwargs)
    assert caught.value.status_code == status, name
    body = caught.value.response.json()
    assert set(body["error"]) == {"message", "type", "param", "code"} and body["error"]["message"]
    assert body["error"]["type"] == "invalid_request_error"
    if param is not None:
        assert body["error"]["param"] == param
    assert http.get("/health").status_code == 200
