"""Feature extraction: one vector per text from chosen layers and a pooling (BERT §5.3 feature-based).

Texts are sorted by length and batched so that little work is wasted on padding; results come back in
input order and do not depend on the batch size.
Shapes: B = batch, T = sequence length, H = hidden size, K = number of layers combined.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from bertforge.errors import OptionError
from bertforge.files import check_output_file, write_atomic
from bertforge.model import BertModel
from bertforge.options import resolve_device
from bertforge.tokenizer import BertTokenizer

if TYPE_CHECKING:
    from bertforge.inference.predictor import Predictor

log = logging.getLogger(__name__)

Pooling = Literal["cls", "pooled", "mean"]
Combine = Literal["concat", "mean", "sum"]


@dataclass
class Embeddings:
    vectors: np.ndarray  # [N, H] or [N, K·H] for concat, float32, in input order
    truncated: list[int]  # indices of texts cut to max_length
    empty: list[int]  # indices of empty texts (embedded as "[CLS] [SEP]")


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Index batches, longest first, so that each batch pads to nearly its own length."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def pool_packed(hidden: torch.Tensor, cu_seqlens: torch.Tensor, pooling: Pooling) -> torch.Tensor:
    """[N, H] packed tokens of B texts -> [B, H]: each text's first ([CLS]) vector or its token mean."""
    if pooling == "cls":
        return hidden[cu_seqlens[:-1]]
    lengths = cu_seqlens.diff()
    rows = torch.repeat_interleave(torch.arange(len(lengths), device=hidden.device), lengths)  # [N]
    sums = hidden.new_zeros(len(lengths), hidden.shape[-1]).index_add_(0, rows, hidden)  # [B, H]
    return sums / lengths.clamp(min=1).unsqueeze(-1).to(hidden.dtype)


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: Pooling) -> torch.Tensor:
    """[B, T, H] -> [B, H]: the [CLS] vector or the mean over real (unpadded) tokens."""
    if pooling == "cls":
        return hidden[:, 0]
    weights = attention_mask.unsqueeze(-1).to(hidden.dtype)  # [B, T, 1]
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)


@torch.inference_mode()
def embed_texts(
    model: BertModel,
    tokenizer: BertTokenizer,
    texts: Sequence[str],
    *,
    pooling: Pooling = "mean",
    layers: Sequence[int] | None = None,
    combine: Combine = "concat",
    batch_size: int = 32,
    max_length: int | None = None,
    normalize: bool = False,
    progress: bool = False,
    predictor: Predictor | None = None,
) -> Embeddings:
    """Embed `texts`. `layers` index hidden states (0 = embeddings, -1 = last; default: last only);
    several layers are combined by `combine` — the paper's best feature-based NER used the concatenation
    of the last four (`layers=[-4, -3, -2, -1]`). `pooled` is the [CLS] pooler output and takes no layers.
    Batches run through `predictor` (default: a packed, length-sorted Predictor over `model`).
    """
    if pooling not in ("cls", "pooled", "mean"):
        raise OptionError(f"--pooling {pooling}: must be cls, pooled or mean")
    if pooling == "pooled" and (model.pooler is None or layers):
        raise OptionError("--pooling pooled: needs a model with a pooler and no --layers")
    layers = list(layers) if layers else [-1]
    n_states = model.config.num_layers + 1
    bad = [i for i in layers if not -n_states <= i < n_states]
    if bad:
        raise OptionError(f"--layers {bad}: out of range; this model has hidden states 0..{n_states - 1} "
                          f"(or -1..-{n_states})")
    max_length = min(max_length or tokenizer.model_max_length, model.config.max_position_embeddings)
    if predictor is None:
        from bertforge.inference.predictor import Predictor

        # batch_size texts per pass, no token budget: the packed forward wastes nothing on padding
        # (it skips dropout, so a model left in training mode takes the plain padded path).
        predictor = Predictor(model, tokenizer, mode="padded" if model.training else "packed",
                              max_batch=batch_size, max_tokens=batch_size * max_length)
    enc = tokenizer.encode(list(texts), max_length=max_length)
    width = model.config.hidden_size * (len(layers) if combine == "concat" else 1)
    out = np.zeros((len(texts), width), dtype=np.float32)
    need_states = layers != [-1]
    batches = predictor.run(enc, output_hidden_states=need_states)
    for batch in tqdm(batches, desc="embedding", unit="batch", disable=not progress):
        if pooling == "pooled":
            vectors = batch.pooled_output
        else:
            states = [batch.hidden_states[i] for i in layers] if need_states else [batch.sequence_output]
            pooled = [pool_packed(h, batch.cu_seqlens, pooling) for h in states]  # K × [B, H]
            if combine == "concat":
                vectors = torch.cat(pooled, dim=-1)
            else:
                vectors = torch.stack(pooled).sum(0) / (len(pooled) if combine == "mean" else 1)
        if normalize:
            vectors = torch.nn.functional.normalize(vectors, dim=-1)
        out[batch.indices] = vectors.float().cpu().numpy()
    return Embeddings(
        vectors=out,
        truncated=[i for i, t in enumerate(enc.truncated) if t],
        empty=[i for i, t in enumerate(texts) if not t.strip()],
    )


def run(
    model: str,
    input: Path,
    output: Path = Path("vectors.npy"),
    pooling: Pooling = "mean",
    layers: list[int] | None = None,
    combine: Combine = "concat",
    text_column: str | None = None,
    batch_size: int = 32,
    max_length: int | None = None,
    normalize: bool = False,
    device: str = "auto",
) -> Path:
    """Write one vector per input text to a .npy file ([N, H] float32, rows in input order).

    Args:
        model: A model directory (Hugging Face format), or all-minilm-l6-v2 for the packaged checkpoint.
        input: .txt (one text per line) or .csv/.tsv/.jsonl with --text-column.
        output: Where to write the vectors (.npy).
        pooling: cls (first token), pooled (tanh pooler on [CLS]) or mean (over real tokens).
        layers: Hidden states to use: 0 = embeddings, -1 = last (default); e.g. [-4,-3,-2,-1].
        combine: How several layers are combined: concat, mean or sum.
        text_column: The text column of a table input.
        batch_size: Texts per forward pass.
        max_length: Longer texts are truncated (and reported); default the model's 512.
        normalize: Scale every vector to unit length.
        device: auto (a GPU if there is one), cpu, cuda, cuda:1, mps, ...
    """
    from bertforge.checkpoint import load_model
    from bertforge.data.tables import read_texts
    from bertforge.pretrained import resolve_model

    check_output_file(output, inputs=(input,))
    directory = resolve_model(model)
    texts = read_texts(input, text_column=text_column)
    bert = load_model(directory).to(resolve_device(device))
    tokenizer = BertTokenizer.from_pretrained(directory)
    result = embed_texts(bert, tokenizer, texts, pooling=pooling, layers=layers, combine=combine,
                         batch_size=batch_size, max_length=max_length, normalize=normalize, progress=True)
    if result.empty:
        log.warning("%s: %d empty texts (first on line %d) embedded as '[CLS] [SEP]'",
                    input, len(result.empty), result.empty[0] + 1)
    if result.truncated:
        log.warning("%s: %d texts longer than the maximum length were truncated (first: text %d)",
                    input, len(result.truncated), result.truncated[0] + 1)
    def save(tmp: Path) -> None:
        with tmp.open("wb") as handle:  # a file object: np.save would append ".npy" to a bare path
            np.save(handle, result.vectors)

    write_atomic(output, save)
    print(f"wrote {result.vectors.shape[0]} vectors of size {result.vectors.shape[1]} to {output}")
    return Path(output)
