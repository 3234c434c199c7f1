"""Model configuration: one frozen dataclass and the named size presets.

The preset numbers are the BERT paper's (§3, "BERT-base L=12 H=768 A=12", "BERT-large L=24 H=1024
A=16") and the smaller checkpoints released with "Well-Read Students Learn Better" (Turc et al., 2019).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from bertforge.errors import BertforgeError

PositionEmbeddingType = Literal[
    "learned", "sinusoidal", "relative_key", "relative_key_query", "rope", "alibi", "none"
]


class ConfigError(BertforgeError, ValueError):
    """A configuration that cannot describe a working model."""


@dataclass(frozen=True)
class BertConfig:
    """Architecture of a BERT encoder.

    Args:
        vocab_size: WordPiece vocabulary size V (BERT's English vocab: 30,522).
        hidden_size: Width H of every layer.
        num_layers: Number of Transformer encoder layers L.
        num_heads: Attention heads A; must divide hidden_size.
        intermediate_size: Width of the feed-forward layer (4H in the paper).
        max_position_embeddings: Longest sequence the position table covers.
        type_vocab_size: Number of segment ids (2: sentence A and sentence B).
        hidden_dropout: Dropout on embeddings and every sub-layer output.
        attention_dropout: Dropout on attention probabilities.
        layer_norm_eps: LayerNorm epsilon (1e-12 in the released checkpoints).
        initializer_range: Std of the truncated-normal-like weight init.
        position_embedding_type: "learned" (BERT), "sinusoidal" (Transformer paper §3.5), "relative_key",
            "relative_key_query", "rope", "alibi" or "none" (see model/positions.py).
        pad_token_id: Id of [PAD]; its embedding row starts at zero.
        classifier_dropout: Dropout before the classification heads; None takes hidden_dropout (as transformers).
    """

    vocab_size: int = 30522
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02
    position_embedding_type: PositionEmbeddingType = "learned"
    pad_token_id: int = 0
    classifier_dropout: float | None = None

    def __post_init__(self) -> None:
        positive = ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size",
                    "max_position_embeddings", "type_vocab_size")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.hidden_size % self.num_heads:
            raise ConfigError(
                f"hidden_size ({self.hidden_size}) must be divisible by num_heads ({self.num_heads}); "
                f"choose num_heads from {_divisors(self.hidden_size)}"
            )
        for name in ("hidden_dropout", "attention_dropout", "classifier_dropout"):
            if getattr(self, name) is not None and not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"{name} must be in [0, 1), got {getattr(self, name)!r}")
        if self.position_embedding_type not in PositionEmbeddingType.__args__:
            raise ConfigError(
                f"position_embedding_type must be one of {', '.join(PositionEmbeddingType.__args__)}, "
                f"got {self.position_embedding_type!r}"
            )
        if self.position_embedding_type == "sinusoidal" and self.hidden_size % 2:
            raise ConfigError("sinusoidal positions need an even hidden_size")
        if self.position_embedding_type == "rope" and self.head_size % 2:
            raise ConfigError(f"rope needs an even head size (hidden_size / num_heads = {self.head_size})")
        if not 0 <= self.pad_token_id < self.vocab_size:
            raise ConfigError(f"pad_token_id {self.pad_token_id} is outside the vocabulary (size {self.vocab_size})")

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_heads

    def replace(self, **changes) -> BertConfig:
        """A copy with some fields changed (validated again)."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ConfigError(f"unknown BertConfig fields: {sorted(unknown)}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> BertConfig:
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"unknown BertConfig fields: {sorted(unknown)}")
        return cls(**values)

    @classmethod
    def from_preset(cls, name: str, **changes) -> BertConfig:
        """A named size (`tiny` … `large`), optionally with fields changed."""
        if name not in PRESETS:
            raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
        layers, hidden, heads = PRESETS[name]
        base = cls(hidden_size=hidden, num_layers=layers, num_heads=heads, intermediate_size=4 * hidden)
        return base.replace(**changes) if changes else base


# name -> (L, H, A); intermediate size is always 4H.
PRESETS: dict[str, tuple[int, int, int]] = {
    "tiny": (2, 128, 2),
    "mini": (4, 256, 4),
    "small": (4, 512, 8),
    "medium": (8, 512, 8),
    "base": (12, 768, 12),
    "large": (24, 1024, 16),
}


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0 and d <= 64]
