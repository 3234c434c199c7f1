"""BERT's input representation drawn for a real sentence pair (BERT §3, Figure 2): each token's vector is
its WordPiece embedding + its segment embedding (A or B) + its position embedding, then LayerNorm.

`input_parts` takes the three tables of a trained model apart for one input; the picture shows the first
dimensions of each as a heat map, one column per token, `##` pieces included.
Shapes: T = tokens of the pair, H = hidden size.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bertforge.errors import OptionError
from bertforge.model import BertModel
from bertforge.tokenizer import BertTokenizer

SENTENCE = "The playwright was unflappable."  # "unflappable" (and "embellishments" below) come out as ## pieces
PAIR = "Critics adored his embellishments."


@dataclass
class InputParts:
    tokens: list[str]
    token: np.ndarray  # [T, H] word_embeddings[input_ids]
    segment: np.ndarray  # [T, H] token_type_embeddings[token_type_ids]
    position: np.ndarray  # [T, H] position table[0 … T-1]
    normalized: np.ndarray  # [T, H] LayerNorm(token + segment + position): what layer 1 receives

    @property
    def summed(self) -> np.ndarray:
        return self.token + self.segment + self.position


@torch.inference_mode()
def input_parts(model: BertModel, tokenizer: BertTokenizer, sentence: str, pair: str | None = None) -> InputParts:
    """The three embeddings of every token of `[CLS] sentence [SEP] pair [SEP]`, and their normalised sum."""
    embeddings = model.embeddings
    table = embeddings.position_table()
    if table is None:
        raise OptionError(f"this model's positions ({model.config.position_embedding_type}) act inside attention; "
                          "the input sum needs absolute (learned or sinusoidal) positions")
    enc = tokenizer.encode(sentence, pair, padding="longest").tensors()
    ids, types = enc["input_ids"][0], enc["token_type_ids"][0]  # [T]
    token = embeddings.word_embeddings(ids)
    segment = embeddings.token_type_embeddings(types)
    position = table[: len(ids)]
    normalized = embeddings.layer_norm(token + segment + position)
    as_numpy = lambda t: t.float().cpu().numpy()  # noqa: E731
    return InputParts([tokenizer.id_to_token(int(i)) for i in ids], as_numpy(token), as_numpy(segment),
                      as_numpy(position), as_numpy(normalized))


def plot_input_parts(parts: InputParts, path: str | Path, dims: int = 24) -> Path:
    """Five heat maps, tokens across and the first `dims` dimensions down: token + segment + position = sum,
    then the LayerNorm output."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [("token (WordPiece) embedding", parts.token, "+"), ("segment embedding (A = 0, B = 1)", parts.segment, "+"),
            ("position embedding (0, 1, 2, …)", parts.position, "="), ("sum", parts.summed, "→"),
            ("LayerNorm(sum): the input to layer 1", parts.normalized, "")]
    width = max(8.0, 0.55 * len(parts.tokens) + 2)
    fig, axes = plt.subplots(len(rows), 1, figsize=(width, 2.1 * len(rows)), sharex=True)
    for ax, (title, values, sign) in zip(axes, rows, strict=True):
        shown = values[:, :dims].T  # [dims, T]
        limit = float(np.abs(shown).max()) or 1.0
        image = ax.imshow(shown, cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto")
        ax.set_ylabel(f"dim 0-{dims - 1}", fontsize=8)
        ax.set_yticks([])
        ax.set_title(f"{title}   {sign}" if sign else title, fontsize=9, loc="left")
        fig.colorbar(image, ax=ax, fraction=0.02, pad=0.01)
    axes[-1].set_xticks(range(len(parts.tokens)))
    axes[-1].set_xticklabels(parts.tokens, rotation=60, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def run(model: str = "all-minilm-l6-v2", sentence: str = SENTENCE, pair: str | None = PAIR,
        output: Path = Path("docs/figures/input_embeddings.png"), dims: int = 24) -> Path:
    """Draw token + segment + position embeddings and their sum for one sentence (pair) of a trained model.

    Args:
        model: A model folder with learned or sinusoidal positions, or all-minilm-l6-v2.
        sentence: Sentence A.
        pair: Sentence B (segment 1); empty for a single sentence.
        output: The PNG to write.
        dims: How many of the first hidden dimensions to draw.
    """
    from bertforge.checkpoint import load_model
    from bertforge.files import check_output_file
    from bertforge.pretrained import resolve_model

    check_output_file(output)
    directory = resolve_model(model)
    parts = input_parts(load_model(directory).eval(), BertTokenizer.from_pretrained(directory), sentence, pair or None)
    plot_input_parts(parts, output, dims=dims)
    print("tokens:", " ".join(parts.tokens))
    print(f"|token| {np.linalg.norm(parts.token, axis=1).mean():.2f}  |segment| "
          f"{np.linalg.norm(parts.segment, axis=1).mean():.2f}  |position| "
          f"{np.linalg.norm(parts.position, axis=1).mean():.2f}  (mean vector lengths)")
    print(f"wrote {output}")
    return Path(output)
