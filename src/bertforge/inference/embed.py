"""Feature extraction: one vector per text from chosen layers and a pooling (BERT §5.3 feature-based).

Texts are sorted by length and batched so that little work is wasted on padding; results come back in
input order and do not depend on the batch size. Pooling and normalisation default to the model folder's own
(sentence-transformers' modules.json, see sentence.py) in `bertforge embed`; `embed_texts` does what it is told.
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
from bertforge.precision import InferencePrecision, inference_device
from bertforge.tokenizer import BertTokenizer, Encoding

if TYPE_CHECKING:
    from bertforge.inference.predictor import Predictor

log = logging.getLogger(__name__)

Pooling = Literal["cls", "pooled", "mean", "max"]
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
    """[N, H] packed tokens of B texts -> [B, H]: each text's first ([CLS]) vector, its token mean or its
    token-wise maximum (special tokens included, as sentence-transformers pools)."""
    if pooling == "cls":
        return hidden[cu_seqlens[:-1]]
    lengths = cu_seqlens.diff()
    rows = torch.repeat_interleave(torch.arange(len(lengths), device=hidden.device), lengths)  # [N]
    if pooling == "max":
        index = rows.unsqueeze(-1).expand_as(hidden)  # [N, H]
        return hidden.new_zeros(len(lengths), hidden.shape[-1]).scatter_reduce_(0, index, hidden, "amax",
                                                                               include_self=False)
    sums = hidden.new_zeros(len(lengths), hidden.shape[-1]).index_add_(0, rows, hidden)  # [B, H]
    return sums / lengths.clamp(min=1).unsqueeze(-1).to(hidden.dtype)


def encode_inputs(tokenizer: BertTokenizer, inputs: Sequence[str] | Sequence[Sequence[int]],
                  max_length: int) -> Encoding:
    """Texts, or token ids of the model's vocabulary (without [CLS]/[SEP]: they are added), -> an Encoding
    cut to max_length."""
    if all(isinstance(x, str) for x in inputs):
        return tokenizer.encode(list(inputs), max_length=max_length)
    if not all(isinstance(x, Sequence) and all(isinstance(t, int) for t in x) for x in inputs):
        raise OptionError("inputs must all be texts or all be lists of token ids")
    bad = [t for x in inputs for t in x if not 0 <= t < tokenizer.vocab_size]
    if bad:
        raise OptionError(f"token id {bad[0]} is outside this model's vocabulary (0..{tokenizer.vocab_size - 1})")
    room = max_length - 2  # [CLS] ids [SEP]
    ids = [[tokenizer.cls_id, *x[:room], tokenizer.sep_id] for x in inputs]
    return Encoding(ids, [[0] * len(x) for x in ids], [], [], [], [], [], [len(x) > room for x in inputs])


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
    precision: InferencePrecision | None = None,
    progress: bool = False,
    predictor: Predictor | None = None,
) -> Embeddings:
    """Embed `texts` (or lists of token ids, see encode_inputs). `layers` index hidden states (0 = embeddings,
    -1 = last; default: last only); several layers are combined by `combine` — the paper's best feature-based
    NER used the concatenation of the last four (`layers=[-4, -3, -2, -1]`). `pooled` is the [CLS] pooler
    output and takes no layers. Batches run through `predictor` (default: a packed, length-sorted Predictor over
    `model` in `precision`, default fp32; a given predictor runs in its own precision).
    """
    if pooling not in ("cls", "pooled", "mean", "max"):
        raise OptionError(f"--pooling {pooling}: must be cls, pooled, mean or max")
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
                              max_batch=batch_size, max_tokens=batch_size * max_length,
                              precision=precision or "fp32")
    elif precision is not None and precision != predictor.precision:
        raise OptionError(f"precision {precision!r}, but the given predictor runs in {predictor.precision!r}")
    enc = encode_inputs(tokenizer, texts, max_length)
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
        empty=[i for i, t in enumerate(texts) if not (t.strip() if isinstance(t, str) else t)],
    )


@dataclass(frozen=True)
class VectorSettings:
    """Vectors.

    Args:
        pooling: cls (first token), pooled (tanh pooler on [CLS]), mean or max (over real tokens); default the
            model folder's own (sentence-transformers' 1_Pooling/config.json), else mean.
        layers: Hidden states to use: 0 = embeddings, -1 = last (default); e.g. [-4,-3,-2,-1].
        combine: How several layers are combined: concat, mean or sum.
        max_length: Longer texts are truncated (and reported); default the folder's sentence-transformers
            max_seq_length, else the model's 512.
        normalize: Scale every vector to unit length; default the model folder's own (a Normalize module in
            modules.json), else false.
        per_token: Write each token's vector (from the last layer, or the one layer of --layers) to an .npz:
            `vectors` [all tokens, H], `offsets` [N + 1] where each text's tokens start, `tokens` (WordPieces).
    """

    pooling: Pooling | None = None
    layers: list[int] | None = None
    combine: Combine = "concat"
    max_length: int | None = None
    normalize: bool | None = None
    per_token: bool = False

    def __post_init__(self) -> None:
        if self.per_token and self.layers and len(self.layers) > 1:
            raise OptionError(f"--per-token --layers {self.layers}: give one layer (per-token vectors are not "
                              "combined)")


def run(model: str, input: Path, output: Path | None = None, text_column: str | None = None,
        vectors: VectorSettings = VectorSettings(), batch_size: int = 32, device: str = "auto",
        precision: InferencePrecision = "fp32") -> Path:
    """Write one vector per input text ([N, H] float32, rows in input order) to an .npy (the array itself) or an
    .npz (the array named `embeddings`), as the suffix of --output says.

    With --per-token, every token's contextual vector instead, to an .npz (see inference/token_vectors.py).

    Args:
        model: A model directory (Hugging Face format), or all-minilm-l6-v2 for the packaged checkpoint.
        input: .txt (one text per line) or .csv/.tsv/.jsonl with --text-column.
        output: Where to write the vectors: .npy (default vectors.npy) or .npz (`np.load(f)["embeddings"]`); with
            --per-token an .npz (default vectors.npz).
        text_column: The text column of a table input.
        vectors: How each vector is made: pooling, layers, length, normalisation (VectorSettings).
        batch_size: Texts per forward pass.
        device: auto (a GPU if there is one), cpu, cuda, cuda:1, mps, ...
        precision: fp32, bf16 (a bf16 copy of the encoder; GPUs and CPUs with native bf16), fp16, int8 (CPU) or auto.
    """
    from bertforge.checkpoint import load_model
    from bertforge.data.tables import read_texts
    from bertforge.inference.sentence import read_sentence_config
    from bertforge.pretrained import resolve_model

    output = Path(output or ("vectors.npz" if vectors.per_token else "vectors.npy"))
    check_output_file(output, inputs=(input,))
    check_vectors_output(output, per_token=vectors.per_token)
    directory = resolve_model(model)
    folder = read_sentence_config(directory).with_options(pooling=vectors.pooling, normalize=vectors.normalize)
    max_length = vectors.max_length or folder.max_length
    texts = read_texts(input, text_column=text_column)
    bert = load_model(directory).to(inference_device(device, precision))
    tokenizer = BertTokenizer.from_pretrained(directory)
    if vectors.per_token:
        return _write_token_vectors(bert, tokenizer, texts, vectors.layers, max_length, batch_size, precision, output)
    result = embed_texts(bert, tokenizer, texts, pooling=folder.pooling, layers=vectors.layers,
                         combine=vectors.combine, batch_size=batch_size, max_length=max_length,
                         normalize=folder.normalize, precision=precision, progress=True)
    if result.empty:
        log.warning("%s: %d empty texts (first on line %d) embedded as '[CLS] [SEP]'",
                    input, len(result.empty), result.empty[0] + 1)
    if result.truncated:
        log.warning("%s: %d texts longer than the maximum length were truncated (first: text %d)",
                    input, len(result.truncated), result.truncated[0] + 1)
    save_vectors(result.vectors, output)
    print(f"wrote {result.vectors.shape[0]} vectors of size {result.vectors.shape[1]} to {output}")
    return Path(output)


def check_vectors_output(output: Path, *, per_token: bool = False) -> None:
    """The one rule for the suffix of `embed --output`, asked before the model loads and again when saving:
    sentence vectors go to .npy (the array) or .npz (the array `embeddings`); per-token vectors, several
    arrays of different shapes, to .npz only."""
    output = Path(output)
    if per_token and output.suffix != ".npz":
        raise OptionError(f"--output {output}: per-token vectors are written as .npz (one array per field); "
                          f"use e.g. --output {output.with_suffix('.npz')}")
    if output.suffix not in (".npy", ".npz"):
        raise OptionError(f"--output {output}: vectors are written as .npy (one array) or .npz (the array "
                          f"'embeddings'); use e.g. --output {output.with_suffix('.npy')}")


def save_vectors(vectors: np.ndarray, output: Path) -> Path:
    """[N, H] sentence vectors to `output`: an .npy holding the array, or an .npz holding it as `embeddings`."""
    check_vectors_output(output)

    def save(tmp: Path) -> None:
        with tmp.open("wb") as handle:  # a file object: np.save would append ".npy" (np.savez ".npz") to a path
            if Path(output).suffix == ".npz":
                np.savez(handle, embeddings=vectors)
            else:
                np.save(handle, vectors)

    write_atomic(output, save)
    return Path(output)


def _write_token_vectors(bert: BertModel, tokenizer: BertTokenizer, texts: list[str], layers: list[int] | None,
                         max_length: int | None, batch_size: int, precision: InferencePrecision,
                         output: Path) -> Path:
    from bertforge.inference.token_vectors import save_token_vectors, token_vectors

    result = token_vectors(bert, tokenizer, texts, layer=layers[0] if layers else -1, max_length=max_length,
                           batch_size=batch_size, precision=precision)
    save_token_vectors(result, output)
    count = sum(len(t) for t in result.tokens)
    print(f"wrote {count} token vectors of {len(texts)} texts (size {bert.config.hidden_size}) to {output}")
    return Path(output)
