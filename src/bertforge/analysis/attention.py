"""Attention maps: what each head of each layer attends to, and how much [CLS] attends to each token.

Shapes: L = layers, A = heads, T = tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bertforge.model import BertModel
from bertforge.tokenizer import BertTokenizer


@dataclass
class AttentionMaps:
    tokens: list[str]
    probs: np.ndarray  # [L, A, T, T]: row i = how token i distributes its attention over the tokens

    def cls_attention(self) -> np.ndarray:
        """[L, T] attention of [CLS] (row 0) to every token, averaged over heads."""
        return self.probs[:, :, 0, :].mean(axis=1)


@torch.inference_mode()
def attention_maps(model: BertModel, tokenizer: BertTokenizer, text: str, pair: str | None = None) -> AttentionMaps:
    enc = tokenizer.encode(text, pair, max_length=model.config.max_position_embeddings, padding="longest")
    out = model(**enc.tensors(), output_attentions=True)
    probs = torch.stack(out.attentions)[:, 0]  # [L, A, T, T]
    return AttentionMaps([tokenizer.id_to_token(int(i)) for i in enc.input_ids[0]], probs.float().numpy())


def plot_head(maps: AttentionMaps, layer: int, head: int, path: str | Path) -> Path:
    """Heat-map of one head: rows are the attending tokens, columns the attended ones."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(maps.tokens)
    fig, ax = plt.subplots(figsize=(2 + 0.35 * n, 1.5 + 0.35 * n))
    image = ax.imshow(maps.probs[layer, head], cmap="viridis", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(n), maps.tokens, rotation=90)
    ax.set_yticks(range(n), maps.tokens)
    ax.set_xlabel("attended token")
    ax.set_ylabel("attending token")
    ax.set_title(f"layer {layer + 1}, head {head + 1}")
    fig.colorbar(image, ax=ax, fraction=0.04)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_cls_attention(maps: AttentionMaps, path: str | Path) -> Path:
    """[L, T] heat-map: per layer, the share of [CLS]'s attention that each token receives."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cls = maps.cls_attention()
    fig, ax = plt.subplots(figsize=(2 + 0.4 * len(maps.tokens), 1.5 + 0.4 * cls.shape[0]))
    image = ax.imshow(cls, cmap="magma", aspect="auto", vmin=0.0)
    ax.set_xticks(range(len(maps.tokens)), maps.tokens, rotation=90)
    ax.set_yticks(range(cls.shape[0]), [f"layer {i + 1}" for i in range(cls.shape[0])])
    ax.set_title("attention of [CLS] to each token (mean over heads)")
    fig.colorbar(image, ax=ax, fraction=0.04)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def run(model: str = "all-minilm-l6-v2", text: str = "The cat sat on the mat because it was tired.",
        pair: str | None = None, layer: int = -1, head: int = 0, output_dir: Path = Path("attention")) -> list[Path]:
    """Draw one head's attention map and the per-layer attention of [CLS]; print what [CLS] looks at.

    Args:
        model: A model directory, or all-minilm-l6-v2 (the packaged checkpoint).
        text: The sentence to look at.
        pair: An optional second sentence (segment B).
        layer: Layer to draw, 0-based; negative counts from the last.
        head: Head to draw, 0-based.
        output_dir: Where the PNG files go.
    """
    from bertforge.checkpoint import load_model
    from bertforge.pretrained import resolve_model

    directory = resolve_model(model)
    bert = load_model(directory)
    maps = attention_maps(bert, BertTokenizer.from_pretrained(directory), text, pair)
    layers, heads = maps.probs.shape[:2]
    if not -layers <= layer < layers or not 0 <= head < heads:
        raise ValueError(f"this model has layers 0..{layers - 1} and heads 0..{heads - 1}")
    layer %= layers
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = [plot_head(maps, layer, head, output_dir / f"attention_layer{layer + 1}_head{head + 1}.png"),
             plot_cls_attention(maps, output_dir / "cls_attention.png")]
    cls = maps.cls_attention()
    for i, row in enumerate(cls):
        top = np.argsort(-row)[:3]
        print(f"layer {i + 1}: [CLS] attends most to " + ", ".join(f"{maps.tokens[t]} {row[t]:.2f}" for t in top))
    for path in paths:
        print(f"wrote {path}")
    return paths
