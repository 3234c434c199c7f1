"""Small random task models with a tiny vocabulary, for tests, ONNX/serve smoke runs and the docs.

No trained task checkpoint ships offline, so the inference tests build these, save them in Hugging Face
format and load them back the way users load real ones. `plant_tokens` sets weights so that chosen token
ids get chosen head outputs — deterministic answers from a random model (see its docstring).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from bertforge.checkpoint import save_model
from bertforge.config import BertConfig
from bertforge.tokenizer import SPECIAL_TOKENS, BertTokenizer

WORDS = (
    "the a an is was of to and in on at for with by from it this that he she they john smith paris "
    "london france city capital river who what where when how many play played playing music guitar good "
    "bad movie great film love hate day night new york times [ ] ! ? . , ' -"
).split()
PIECES = ("##s", "##ed", "##ing", "##son", "##ly", "##er")


def tiny_tokenizer(directory: str | Path) -> BertTokenizer:
    """A 100-odd token uncased WordPiece vocabulary (specials, words, letters and suffix pieces)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [f"##{chr(c)}" for c in range(ord("a"), ord("z") + 1)]
    digits = [str(d) for d in range(10)]
    tokens = list(dict.fromkeys([*SPECIAL_TOKENS, *WORDS, *PIECES, *letters, *digits]))
    (directory / "vocab.txt").write_text("".join(t + "\n" for t in tokens), encoding="utf-8")
    return BertTokenizer.from_vocab(directory / "vocab.txt")


def tiny_config(vocab_size: int, **changes) -> BertConfig:
    """Odd sizes expose transposition bugs: H = 96, A = 3 heads of 32, I = 80, 2 layers."""
    values = dict(vocab_size=vocab_size, hidden_size=96, num_layers=2, num_heads=3, intermediate_size=80,
                  max_position_embeddings=128)
    values.update(changes)
    return BertConfig(**values)


def build(model_class: type[nn.Module], directory: str | Path, *, seed: int = 0, **kwargs) -> nn.Module:
    """A random `model_class` over the tiny vocabulary, saved (with its tokenizer) to `directory`."""
    tok = tiny_tokenizer(directory)
    torch.manual_seed(seed)
    model = model_class(tiny_config(tok.vocab_size), **kwargs).eval()
    save_model(model, directory, tokenizer=tok)
    return model


@torch.no_grad()
def plant_tokens(model: nn.Module, head: nn.Linear, rows: dict[int, Sequence[int]], *, scale: float = 1.0,
                 default_bias: float = 0.0) -> None:
    """Make `head` output row r light up exactly on the tokens `rows[r]`.

    Zeroing every layer's attention-output and feed-forward-output weights makes each encoder layer
    LayerNorm(LayerNorm(x)), so the final hidden state of a token is LayerNorm(its word embedding) (position
    and segment embeddings zeroed too). Head row r is then set to the sum of those vectors for its tokens;
    random vectors of width H are nearly orthogonal (dot ≈ N(0, H)) while a vector with itself gives ≈ H,
    so row r scores ≈ H·scale on its tokens and ≈ 0 elsewhere. Rows not in `rows` get `default_bias`.
    """
    bert = model.bert
    for layer in bert.layers:
        for linear in (layer.attention.output, layer.output):
            linear.weight.zero_()
            linear.bias.zero_()
    bert.embeddings.position_embeddings.weight.zero_()
    bert.embeddings.token_type_embeddings.weight.zero_()
    emb = bert.embeddings.word_embeddings.weight
    normed = F.layer_norm(emb, emb.shape[-1:], eps=bert.config.layer_norm_eps)  # [V, H]
    head.weight.zero_()
    head.bias.fill_(default_bias)
    for r, token_ids in rows.items():
        head.weight[r] = scale * normed[list(token_ids)].sum(0)
        head.bias[r] = 0.0
