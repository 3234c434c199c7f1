"""Position information, one function per scheme. Which one a model uses is `config.position_embedding_type`:

- learned       absolute vectors added to the input (BERT §3); lives in embeddings.py
- sinusoidal    fixed absolute vectors added to the input (Transformer §3.5); lives in embeddings.py
- relative_key  a learned vector per clipped distance, scored against the query (Shaw et al., 2018),
                the Hugging Face BERT `relative_key` layout
- relative_key_query  the same scored against query and key (Huang et al., 2020, "method 4")
- rope          queries and keys rotated by position (Su et al., 2021, RoFormer)
- alibi         a per-head linear penalty on distance added to the scores (Press et al., 2022), symmetric
                |i - j| for the bidirectional encoder
- none          no position information at all: the encoder sees a bag of tokens

Shapes: A = heads, T = queries, K = keys (cached + new), D = head size, P = max positions.
"""

from __future__ import annotations

import math

import torch

ABSOLUTE = ("learned", "sinusoidal")
RELATIVE = ("relative_key", "relative_key_query")
# Schemes that add a bias for every (query, key) distance: they need the padded layout, not packed tokens.
DISTANCE_BIAS = (*RELATIVE, "alibi")


def sinusoidal_table(num_positions: int, dim: int) -> torch.Tensor:
    """Transformer paper §3.5: PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(...). [P, d]"""
    position = torch.arange(num_positions, dtype=torch.float64).unsqueeze(1)  # [P, 1]
    inv_freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float64) * (-math.log(10000.0) / dim))  # [d/2]
    table = torch.zeros(num_positions, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(position * inv_freq)
    table[:, 1::2] = torch.cos(position * inv_freq)
    return table.float()


def relative_scores(q: torch.Tensor, k: torch.Tensor, distance_table: torch.Tensor, distance: torch.Tensor,
                    max_positions: int, with_key: bool) -> torch.Tensor:
    """[B, A, T, K] unscaled position scores q_i·r_(i-j) (+ k_j·r_(i-j) for relative_key_query).

    q: [B, A, T, D], k: [B, A, K, D], distance_table: [2P - 1, D], distance: [T, K]."""
    r = distance_table[distance + max_positions - 1]  # [T, K, D]
    scores = torch.einsum("batd,tkd->batk", q, r)
    if with_key:
        scores = scores + torch.einsum("bakd,tkd->batk", k, r)
    return scores


def alibi_slopes(num_heads: int) -> torch.Tensor:
    """[A] head slopes: the geometric sequence 2^(-8/n), 2^(-16/n), … of Press et al. (2022); for a head
    count that is not a power of two, the closest power's slopes plus every other one of the next."""
    def power_of_two(n: int) -> list[float]:
        start = 2 ** (-8 / n)
        return [start ** (i + 1) for i in range(n)]

    closest = 2 ** math.floor(math.log2(num_heads))
    slopes = power_of_two(closest)
    if closest < num_heads:
        slopes += power_of_two(2 * closest)[0::2][: num_heads - closest]
    return torch.tensor(slopes)


def alibi_bias(slopes: torch.Tensor, distance: torch.Tensor) -> torch.Tensor:
    """[A, T, K] = -slope · |i - j| (symmetric: the encoder attends both ways)."""
    return -slopes[:, None, None] * distance.abs()[None].to(slopes.dtype)


def rope_rotate(x: torch.Tensor, positions: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Rotate each pair (x_i, x_(i + D/2)) of [B, A, T, D] by angle pos · base^(-2i/D) (the "rotate half" layout)."""
    dim = x.shape[-1]
    inv_freq = base ** (-torch.arange(0, dim, 2, device=x.device, dtype=torch.float32) / dim)  # [D/2]
    angles = positions.to(torch.float32)[:, None] * inv_freq[None, :]  # [T, D/2]
    cos = torch.cat([angles.cos(), angles.cos()], dim=-1).to(x.dtype)  # [T, D]
    sin = torch.cat([angles.sin(), angles.sin()], dim=-1).to(x.dtype)
    first, second = x[..., : dim // 2], x[..., dim // 2 :]
    rotated_half = torch.cat([-second, first], dim=-1)
    return x * cos + rotated_half * sin
