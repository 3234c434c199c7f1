"""Dynamic masking for the masked-LM objective (BERT §3.1 "Task #1", Appendix A.1).

Applied per batch, so every epoch sees a fresh mask (RoBERTa §4.1). Of the maskable tokens ([CLS],
[SEP] and padding never are) a fraction `rate` is selected, at most `max_predictions` per sequence;
of those 80% become [MASK], 10% a random token and 10% stay unchanged. The per-sequence count is
rate × length rounded *stochastically* (floor(x + u), u ~ U[0,1)), so the expected selected fraction
is exactly `rate` at every length instead of drifting with the rounding of short sequences.

Shapes: B = batch, T = sequence length.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

IGNORE_INDEX = -100  # label of positions that are not predicted


@dataclass(frozen=True)
class MaskingSettings:
    rate: float = 0.15  # BERT §3.1: 15% of WordPiece tokens
    mask_fraction: float = 0.8  # of the selected: -> [MASK]
    random_fraction: float = 0.1  # of the selected: -> a random token (the other 10% stay unchanged)
    max_predictions: int = 20  # BERT's max_predictions_per_seq for length 128 (80 for 512)
    whole_word: bool = False  # select whole words: a word's "##" pieces are masked with it


@dataclass
class MaskedBatch:
    input_ids: torch.Tensor  # [B, T] with the replacements applied
    labels: torch.Tensor  # [B, T] original id at selected positions, IGNORE_INDEX elsewhere
    masked_positions: torch.Tensor  # [B, T] bool, the selected positions


def mask_tokens(input_ids: torch.Tensor, special_tokens_mask: torch.Tensor, *, mask_id: int,
                replacement_ids: torch.Tensor, settings: MaskingSettings, generator: torch.Generator,
                continuation: torch.Tensor | None = None) -> MaskedBatch:
    """Select and corrupt tokens for MLM.

    Args:
        input_ids: [B, T] token ids.
        special_tokens_mask: [B, T] bool, True where a token must never be selected.
        mask_id: id of [MASK].
        replacement_ids: 1-d ids a "random token" is drawn from (the vocabulary minus special tokens).
        settings: rates and limits.
        generator: the source of randomness (seeded per step by the trainer, so a resumed run repeats it).
        continuation: [V] bool, True for "##" pieces; needed for whole-word masking.
    """
    maskable = ~special_tokens_mask
    if settings.whole_word:
        if continuation is None:
            raise ValueError("whole-word masking needs the vocabulary's continuation-piece table")
        selected = _select_whole_words(input_ids, maskable, continuation[input_ids] & maskable, settings, generator)
    else:
        selected = _select_tokens(maskable, settings, generator)
    labels = torch.where(selected, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
    action = torch.rand(input_ids.shape, generator=generator)
    to_mask = selected & (action < settings.mask_fraction)
    keep_from = settings.mask_fraction + settings.random_fraction
    to_random = selected & (action >= settings.mask_fraction) & (action < keep_from)
    random_ids = replacement_ids[torch.randint(len(replacement_ids), input_ids.shape, generator=generator)]
    corrupted = torch.where(to_mask, torch.full_like(input_ids, mask_id), input_ids)
    corrupted = torch.where(to_random, random_ids, corrupted)
    return MaskedBatch(input_ids=corrupted, labels=labels, masked_positions=selected)


def _count(maskable: torch.Tensor, settings: MaskingSettings, generator: torch.Generator) -> torch.Tensor:
    """[B] number of tokens to select: floor(rate × n + u), at least 1, at most max_predictions and n."""
    n = maskable.sum(dim=1)
    k = (n * settings.rate + torch.rand(n.shape, generator=generator)).floor().long()
    return k.clamp(min=1, max=settings.max_predictions).minimum(n)


def _select_tokens(maskable: torch.Tensor, settings: MaskingSettings, generator: torch.Generator) -> torch.Tensor:
    """[B, T] bool: k random maskable positions per row."""
    k = _count(maskable, settings, generator)
    scores = torch.rand(maskable.shape, generator=generator).masked_fill(~maskable, 2.0)
    ranks = scores.argsort(dim=1).argsort(dim=1)  # rank of each position in a random order
    return ranks < k[:, None]


def _select_whole_words(input_ids: torch.Tensor, maskable: torch.Tensor, continuation: torch.Tensor,
                        settings: MaskingSettings, generator: torch.Generator) -> torch.Tensor:
    """[B, T] bool: whole words in random order while their tokens fit into the row's budget k."""
    k = _count(maskable, settings, generator)
    # A word starts at a non-"##" token, or at a "##" piece that follows a special token (a segment
    # whose front was trimmed).
    after_special = torch.nn.functional.pad(~maskable[:, :-1], (1, 0), value=True)
    starts = maskable & (~continuation | after_special)
    word = starts.long().cumsum(dim=1) - 1  # [B, T] index of each token's word within its row
    scores = torch.rand(input_ids.shape, generator=generator)
    selected = torch.zeros_like(maskable)
    for row in range(input_ids.shape[0]):
        start_positions = starts[row].nonzero().squeeze(1)
        if not len(start_positions):
            continue
        in_word = maskable[row] & (word[row] >= 0)
        sizes = torch.bincount(word[row][in_word], minlength=len(start_positions))
        order = scores[row, start_positions].argsort()
        taken = torch.zeros(len(start_positions), dtype=torch.bool)
        budget = int(k[row])
        for w in order.tolist():  # skip a word that would overshoot, as create_pretraining_data.py does
            if budget <= 0:
                break
            if sizes[w] <= budget:
                taken[w] = True
                budget -= int(sizes[w])
        selected[row] = in_word & taken[word[row].clamp(min=0)]
    return selected


def replacement_vocabulary(vocab_size: int, special_ids: set[int] | frozenset[int]) -> torch.Tensor:
    """Ids a "random token" replacement is drawn from: the whole vocabulary except special tokens."""
    keep = torch.ones(vocab_size, dtype=torch.bool)
    keep[list(special_ids)] = False
    return keep.nonzero().squeeze(1)


def continuation_table(vocab: list[str]) -> torch.Tensor:
    """[V] bool: True for WordPiece continuation pieces ("##ing"), for whole-word masking."""
    return torch.tensor([token.startswith("##") for token in vocab], dtype=torch.bool)
