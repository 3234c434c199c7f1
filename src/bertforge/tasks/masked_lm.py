"""Masked-LM predictions (BERT §3.1, task #1): the likeliest tokens behind each [MASK].

The fill-mask pipeline, the HTTP service and the quickstart's probes all decode the MLM head's logits here.
Shapes: M = masked positions, V = vocabulary.
"""

from __future__ import annotations

import torch


def top_tokens(logits: torch.Tensor, tokenizer, *, top_k: int) -> list[list[dict]]:
    """[M, V] logits at masked positions -> per position the top-k {token, token_id, score}, score = the
    softmax probability over the vocabulary, most likely first."""
    probs = logits.float().softmax(-1)  # [M, V]
    top = probs.topk(min(top_k, probs.shape[-1]), dim=-1)
    return [[{"token": tokenizer.id_to_token(j), "token_id": j, "score": p} for p, j in zip(ps, ids, strict=True)]
            for ps, ids in zip(top.values.tolist(), top.indices.tolist(), strict=True)]
