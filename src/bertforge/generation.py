"""Text generation with a left-to-right BERT (`BertLMHeadModel`): greedy or sampled decoding
(temperature, top-k, nucleus/top-p) with a KV cache, stopping at [SEP] or after max_new_tokens.

Shapes: B = batch (1 here), T = tokens so far, V = vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bertforge.heads import BertLMHeadModel
from bertforge.model import KVCache
from bertforge.tokenizer import BertTokenizer


@dataclass
class Generation:
    text: str  # the generated continuation, decoded
    ids: list[int]  # the generated ids (the prompt excluded, a final [SEP] included)
    stopped: bool  # True when [SEP] ended it, False when max_new_tokens did


def filter_logits(logits: torch.Tensor, *, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """[V] logits with everything outside the top-k and the top-p nucleus set to -inf."""
    logits = logits.clone()
    if top_k > 0:
        kth = logits.topk(min(top_k, logits.numel())).values[-1]
        logits[logits < kth] = float("-inf")
    if top_p < 1.0:
        sorted_logits, order = logits.sort(descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        # Drop a token when the tokens before it already cover top_p (so the first one always stays).
        drop = cumulative - sorted_logits.softmax(-1) >= top_p
        logits[order[drop]] = float("-inf")
    return logits


@torch.inference_mode()
def generate_ids(model: BertLMHeadModel, prompt_ids: list[int], *, max_new_tokens: int = 20,
                 temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, stop_id: int | None = None,
                 use_cache: bool = True, generator: torch.Generator | None = None) -> tuple[list[int], bool]:
    """Continue `prompt_ids`. temperature 0 is greedy; otherwise sample from softmax(logits / temperature)."""
    if not prompt_ids:
        raise ValueError("the prompt must hold at least one token ([CLS])")
    limit = model.config.max_position_embeddings - len(prompt_ids)
    ids = list(prompt_ids)
    cache = KVCache.empty(model.config.num_layers) if use_cache else None
    step_input = torch.tensor([ids])
    for _ in range(min(max_new_tokens, limit)):
        logits = model(step_input, cache=cache).logits[0, -1]  # [V] prediction for the next position
        if temperature <= 0:
            next_id = int(logits.argmax())
        else:
            probs = filter_logits(logits / temperature, top_k=top_k, top_p=top_p).softmax(-1)
            next_id = int(torch.multinomial(probs, 1, generator=generator))
        ids.append(next_id)
        if next_id == stop_id:
            return ids[len(prompt_ids):], True
        # With a cache only the new token goes in; without one the whole sequence is recomputed.
        step_input = torch.tensor([[next_id]]) if use_cache else torch.tensor([ids])
    return ids[len(prompt_ids):], False


def generate(model: BertLMHeadModel, tokenizer: BertTokenizer, prompt: str, *, max_new_tokens: int = 20,
             temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, seed: int | None = None) -> Generation:
    """Continue a text prompt: `[CLS] prompt` then tokens until [SEP] or max_new_tokens."""
    prompt_ids = tokenizer.encode(prompt, add_special_tokens=False).input_ids[0]
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    ids, stopped = generate_ids(model, [tokenizer.cls_id, *prompt_ids], max_new_tokens=max_new_tokens,
                                temperature=temperature, top_k=top_k, top_p=top_p, stop_id=tokenizer.sep_id,
                                generator=generator)
    return Generation(text=tokenizer.decode(ids), ids=ids, stopped=stopped)


def run(model: str, prompt: list[str], max_new_tokens: int = 30, temperature: float = 0.0, top_k: int = 0,
        top_p: float = 1.0, seed: int | None = 0) -> list[Generation]:
    """Continue each prompt with a left-to-right model (e.g. `bertforge pretrain --objective ltr`).

    Args:
        model: A model directory holding a causal LM (BertLMHeadModel weights: an LTR pre-training's export).
        prompt: One or more prompts; each is continued on its own.
        max_new_tokens: Stop after this many new tokens (or at [SEP]).
        temperature: 0 is greedy decoding; above 0 samples from softmax(logits / temperature).
        top_k: Sample among the k most likely tokens only (0: no limit).
        top_p: Sample within the smallest set of tokens whose probability reaches top_p (1: no limit).
        seed: Seed of the sampling.
    """
    from bertforge.checkpoint import load_model
    from bertforge.pretrained import resolve_model

    directory = resolve_model(model)
    tokenizer = BertTokenizer.from_pretrained(directory)
    lm = load_model(directory, BertLMHeadModel)
    results = []
    for text in prompt:
        out = generate(lm, tokenizer, text, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                       top_p=top_p, seed=seed)
        print(f"{text} → {out.text}" + ("" if out.stopped else " …"))
        results.append(out)
    return results
