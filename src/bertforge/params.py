"""Where a BERT's parameters are: counted from the formula, checked against the built model."""

from __future__ import annotations

import torch

from bertforge.config import PRESETS, BertConfig


def parameter_table(config: BertConfig, *, pooler: bool = True) -> list[tuple[str, str, int]]:
    """Rows of (component, formula, count), from the architecture alone."""
    h, i, v = config.hidden_size, config.intermediate_size, config.vocab_size
    p, s, n = config.max_position_embeddings, config.type_vocab_size, config.num_layers
    learned = config.position_embedding_type == "learned"
    per_layer = [
        ("  attention Q, K, V", "3(H·H + H)", 3 * (h * h + h)),
        ("  attention output", "H·H + H", h * h + h),
        ("  attention LayerNorm", "2H", 2 * h),
        ("  feed-forward in", "H·I + I", h * i + i),
        ("  feed-forward out", "I·H + H", i * h + h),
        ("  output LayerNorm", "2H", 2 * h),
    ]
    rows = [
        ("token embeddings", "V·H", v * h),
        ("position embeddings", "P·H" if learned else "0 (sinusoidal, fixed)", p * h if learned else 0),
        ("segment embeddings", "2·H" if s == 2 else "S·H", s * h),
        ("embedding LayerNorm", "2H", 2 * h),
        *per_layer,
        (f"{n} layers", f"{n} × (4H² + 2HI + 9H + I)", n * sum(c for _, _, c in per_layer)),
    ]
    if pooler:
        rows.append(("pooler", "H·H + H", h * h + h))
    return rows


def total_parameters(config: BertConfig, *, pooler: bool = True) -> int:
    rows = parameter_table(config, pooler=pooler)
    return sum(c for name, _, c in rows if not name.startswith("  "))


def approximate_parameters(config: BertConfig) -> list[tuple[str, str, str, int]]:
    """The back-of-envelope count: rows of (part, formula, the formula with this config's numbers, count).

    A layer's matrices are Q, K, V and the attention output (4·H²) and the feed-forward pair (2·H·I); with
    I = 4H (every BERT size) that is 12·H² per layer. Embeddings are the token and position tables. Biases,
    LayerNorms, the segment table and the pooler are left out: at most about 1% of any preset.
    """
    h, i, n, v = config.hidden_size, config.intermediate_size, config.num_layers, config.vocab_size
    if i == 4 * h:
        layers = ("layers", "12·L·H²", f"12 × {n} × {h}²", 12 * n * h * h)
    else:
        layers = ("layers", "L·(4H² + 2HI)", f"{n} × (4 × {h}² + 2 × {h} × {i})", n * (4 * h * h + 2 * h * i))
    if config.position_embedding_type == "learned":
        p = config.max_position_embeddings
        embeddings = ("embeddings", "V·H + P·H", f"({v:,} + {p:,}) × {h}", (v + p) * h)
    else:
        embeddings = ("embeddings", "V·H", f"{v:,} × {h}", v * h)
    return [layers, embeddings, ("sum", "", "", layers[3] + embeddings[3])]


def _millions(count: int) -> str:
    return f"{count / 1e6:.1f}M"


def run(preset: str = "base", pooler: bool = True, position_embedding_type: str = "learned") -> int:
    """Print where the parameters of a preset are and the total.

    Args:
        preset: One of tiny, mini, small, medium, base, large.
        pooler: Count the [CLS] pooler (BertModel has it; token classification and QA models do not).
        position_embedding_type: learned (BERT) or sinusoidal (no position parameters).
    """
    from bertforge.model import BertModel

    config = BertConfig.from_preset(preset, position_embedding_type=position_embedding_type)
    rows = parameter_table(config, pooler=pooler)
    total = total_parameters(config, pooler=pooler)
    with torch.device("meta"):  # count the real modules without allocating their memory
        built = BertModel(config, add_pooling_layer=pooler).num_parameters()
    if built != total:
        raise AssertionError(f"formula says {total:,} but the model has {built:,} parameters")
    layers, hidden, heads = PRESETS[preset]
    print(f"BERT {preset}: L={layers} H={hidden} A={heads} I={config.intermediate_size} "
          f"V={config.vocab_size} P={config.max_position_embeddings}")
    for name, formula, count in rows:
        print(f"{name:<24} {formula:<28} {count:>14,}")
    print(f"{'total':<24} {'':<28} {total:>14,}")
    print("\napproximately (matrices only; biases, LayerNorms, segments and pooler left out):")
    for name, formula, arithmetic, count in approximate_parameters(config):
        print(f"{name:<10} {formula:<13} {arithmetic:<28} {count:>14,}  ≈ {_millions(count)}")
    print(f"{'exact':<24} {'':<28} {total:>14,}  ≈ {_millions(total)}")
    return total
