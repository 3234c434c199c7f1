"""A model folder's own sentence-embedding recipe, read the way sentence-transformers reads it.

A sentence-transformers folder lists its modules in `modules.json`: the Transformer (the BERT folder itself,
with `sentence_bert_config.json` giving the length texts are cut to), a Pooling module (its `config.json`
chooses [CLS], mean or max) and, for most models, a Normalize module (unit-length vectors). So
`SentenceTransformer(folder).encode(texts)` gives mean-pooled unit vectors of texts cut at 256 tokens for
all-MiniLM-L6-v2, and the [CLS] vector for a CLS-pooled model.

`read_sentence_config` turns those files into the defaults that `bertforge embed`, `SentenceEncoder.encode`,
HTTP `/embed` and `/v1/embeddings` all start from, so the four agree; an explicit option overrides a default.
A folder without `modules.json` gets what sentence-transformers gives a plain BERT folder: mean pooling, not
normalised. A module bertforge cannot apply (a Dense projection, a pooling it lacks) is an error rather than
vectors that silently differ from sentence-transformers'.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from bertforge.pretrained import DEFAULT_MODEL, CheckpointError

if TYPE_CHECKING:
    import numpy as np

    from bertforge.inference.embed import Pooling
    from bertforge.precision import InferencePrecision

# 1_Pooling/config.json flag -> bertforge's --pooling
POOLING_FLAGS = {"pooling_mode_cls_token": "cls", "pooling_mode_mean_tokens": "mean", "pooling_mode_max_tokens": "max"}


@dataclass(frozen=True)
class SentenceConfig:
    """How a folder's texts become vectors when no option says otherwise."""

    pooling: Pooling = "mean"
    normalize: bool = False
    max_length: int | None = None  # sentence-transformers' max_seq_length; None = the model's own limit

    def with_options(self, *, pooling: Pooling | None = None, normalize: bool | None = None) -> SentenceConfig:
        """These settings, with every option that was given (not None) in place of the folder's value."""
        given = {"pooling": pooling, "normalize": normalize}
        return replace(self, **{name: value for name, value in given.items() if value is not None})


def read_sentence_config(directory: str | Path) -> SentenceConfig:
    """The folder's sentence-transformers settings (modules.json, 1_Pooling, 2_Normalize), or the plain
    defaults when it has none."""
    directory = Path(directory)
    modules_file = directory / "modules.json"
    if not modules_file.is_file():
        return SentenceConfig(max_length=_max_seq_length(directory))
    modules = _read_json(modules_file)
    if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
        raise CheckpointError(f"{modules_file}: expected a list of modules ({{\"type\": ..., \"path\": ...}})")
    settings = SentenceConfig(max_length=_max_seq_length(directory))
    for module in modules:
        kind = str(module.get("type", "")).rsplit(".", 1)[-1]  # sentence_transformers.models.Pooling -> Pooling
        path = directory / str(module.get("path", ""))
        if kind == "Transformer":
            settings = replace(settings, max_length=_max_seq_length(path))
        elif kind == "Pooling":
            settings = replace(settings, pooling=_pooling(path / "config.json"))
        elif kind == "Normalize":  # no files of its own: being listed is the setting
            settings = replace(settings, normalize=True)
        else:
            raise CheckpointError(f"{modules_file}: module {module.get('type')!r} is not one bertforge applies "
                                  "(Transformer, Pooling, Normalize), so its vectors would differ from "
                                  "sentence-transformers'; embed with sentence-transformers instead")
    return settings


def _pooling(config_file: Path) -> Pooling:
    values = _read_json(config_file)
    chosen = [name for name, on in values.items() if name.startswith("pooling_mode_") and on is True]
    unknown = [name for name in chosen if name not in POOLING_FLAGS]
    if unknown or len(chosen) != 1:
        wanted = ", ".join(POOLING_FLAGS)
        raise CheckpointError(f"{config_file}: pooling {', '.join(chosen) or 'none'}; bertforge pools with "
                              f"exactly one of {wanted}")
    return POOLING_FLAGS[chosen[0]]


def _max_seq_length(directory: Path) -> int | None:
    config_file = directory / "sentence_bert_config.json"
    if not config_file.is_file():
        return None
    value = _read_json(config_file).get("max_seq_length")
    if value is not None and (not isinstance(value, int) or value < 1):
        raise CheckpointError(f"{config_file}: max_seq_length {value!r} is not a positive whole number")
    return value


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing, but modules.json names it; restore the file or remove the "
                              "module from modules.json") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from None


class SentenceEncoder:
    """sentence-transformers' `SentenceTransformer(name).encode(texts)`, on bertforge's packed predictor: the
    folder's own pooling, normalisation and length (read_sentence_config), unless an option says otherwise.

        encoder = SentenceEncoder("all-minilm-l6-v2")
        vectors = encoder.encode(["A man is playing a guitar.", "Someone plays music."])  # [2, 384], unit length
    """

    def __init__(self, model: str | Path = DEFAULT_MODEL, *, device: str = "cpu",
                 precision: InferencePrecision = "fp32", batch_size: int = 32) -> None:
        from bertforge.inference.pipelines import load_pipeline

        self.loaded = load_pipeline(model, device=device, precision=precision, max_batch=batch_size)
        self.config = self.loaded.sentence

    def encode(self, texts: str | Sequence[str], *, pooling: Pooling | None = None,
               normalize: bool | None = None) -> np.ndarray:
        """float32 vectors, [N, H] for a list of texts and [H] for one text (as sentence-transformers)."""
        from bertforge.inference.pipelines import embed

        settings = self.config.with_options(pooling=pooling, normalize=normalize)
        many = [texts] if isinstance(texts, str) else list(texts)
        vectors = embed(self.loaded.predictor, many, pooling=settings.pooling, normalize=settings.normalize)
        return vectors[0] if isinstance(texts, str) else vectors
