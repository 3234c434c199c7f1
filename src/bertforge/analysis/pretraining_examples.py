"""Pre-training examples from a real corpus, printed: `[CLS] A [SEP] B [SEP]` pairs labelled IsNext or
NotNext (BERT §3.1 Task #2), and the masked-LM corruption of each (Task #1: 15% of the tokens chosen; of
those 80% become [MASK], 10% a random token, 10% stay as they were), then counts over many examples.

Everything goes through the code pre-training runs: `build_examples`, `collate` and the trainer's
`BatchMasker`; only the shard is built in memory instead of by `bertforge prepare`.
"""

from __future__ import annotations

import random
import textwrap
from collections import Counter
from collections.abc import Sequence
from itertools import islice
from pathlib import Path

import numpy as np
import torch

from bertforge.data.corpus import corpus_files, iter_documents
from bertforge.data.masking import IGNORE_INDEX, MaskedBatch, MaskingSettings
from bertforge.data.pretraining import IS_NEXT, ExampleSettings, PreTrainingBatch, build_examples, collate
from bertforge.data.shards import Shard
from bertforge.tokenizer import BertTokenizer

NSP_NAMES = {IS_NEXT: "IsNext", 1 - IS_NEXT: "NotNext"}


def corpus_shard(files: Sequence[str | Path], tokenizer: BertTokenizer, max_documents: int) -> Shard:
    """The first `max_documents` documents of a corpus as one in-memory shard (as `prepare` would write it)."""
    tokens: list[int] = []
    sentences, documents = [0], [0]
    for document in islice(iter_documents(corpus_files(files)), max_documents):
        ids = tokenizer.encode(document, add_special_tokens=False, truncation=None, max_length=10**9).input_ids
        ids = [s for s in ids if s]
        for sentence in ids:
            tokens.extend(sentence)
            sentences.append(len(tokens))
        documents.append(len(sentences) - 1)
    return Shard(np.asarray(tokens, dtype=np.int64), np.asarray(sentences), np.asarray(documents), name="memory")


def corruption_kinds(batch: PreTrainingBatch, masked: MaskedBatch, mask_id: int) -> torch.Tensor:
    """[B, T] int: 0 not chosen, 1 → [MASK], 2 → another token, 3 chosen but left unchanged. (A random
    replacement that draws the original token counts as unchanged, as the model sees it.)"""
    kinds = torch.zeros_like(batch.input_ids)
    chosen = masked.labels != IGNORE_INDEX
    kinds[chosen & (masked.input_ids == mask_id)] = 1
    kinds[chosen & (masked.input_ids != mask_id) & (masked.input_ids != batch.input_ids)] = 2
    kinds[chosen & (masked.input_ids == batch.input_ids)] = 3
    return kinds


def describe(tokenizer: BertTokenizer, batch: PreTrainingBatch, masked: MaskedBatch, row: int) -> str:
    """One example as text: the pair with its NSP label, what the model sees, and the targets."""
    length = int(batch.attention_mask[row].sum())
    original = [tokenizer.id_to_token(int(i)) for i in batch.input_ids[row, :length]]
    shown = [tokenizer.id_to_token(int(i)) for i in masked.input_ids[row, :length]]
    kinds = corruption_kinds(batch, masked, tokenizer.mask_id)[row, :length].tolist()
    wrap = lambda words: textwrap.fill(" ".join(words), 110, initial_indent="    ", subsequent_indent="    ")  # noqa: E731
    targets = [f"{original[i]}→{shown[i]}" + {1: "", 2: " (random)", 3: " (kept)"}[k]
               for i, k in enumerate(kinds) if k]
    label = NSP_NAMES[int(batch.nsp_labels[row])]
    pairing = "B follows A in its document" if label == "IsNext" else "B comes from another document"
    return "\n".join([f"{label}: {pairing}", wrap(original), "  what the model sees:", wrap(shown),
                      textwrap.fill(f"{len(targets)} targets: " + ", ".join(targets), 110, initial_indent="  ",
                                    subsequent_indent="    ")])


def tally(kinds: torch.Tensor, special: torch.Tensor, nsp_labels: torch.Tensor) -> dict[str, float]:
    """Shares over many examples: tokens chosen, and of those each corruption; IsNext pairs."""
    counts = Counter(kinds[~special].tolist())
    chosen = counts[1] + counts[2] + counts[3]
    per = max(1, chosen)
    return {"examples": len(nsp_labels), "chosen": chosen / max(1, int((~special).sum())),
            "mask": counts[1] / per, "random": counts[2] / per, "kept": counts[3] / per,
            "is_next": float((nsp_labels == IS_NEXT).float().mean())}


def run(files: list[Path], vocab: str = "all-minilm-l6-v2", examples: int = 3, max_documents: int = 200,
        max_length: int = 128, seed: int = 0, count_examples: int = 2000) -> dict[str, float]:
    """Print pre-training examples from a corpus: IsNext/NotNext pairs and their 80/10/10 masking.

    Args:
        files: Corpus text files or folders (plain or .gz; one paragraph per line, a blank line between documents).
        vocab: A tokenizer/model folder, or all-minilm-l6-v2 (the packaged uncased vocabulary).
        examples: How many examples to print.
        max_documents: Documents read from the start of the corpus.
        max_length: Longest example in tokens, [CLS] and [SEP]s included (BERT: 128, then 512).
        seed: Seed of the pairing, the order and the masks.
        count_examples: Examples the printed shares are counted over.
    """
    from bertforge.pretrained import resolve_model
    from bertforge.training.pretrain import BatchMasker

    tokenizer = BertTokenizer.from_pretrained(resolve_model(vocab))
    shard = corpus_shard(files, tokenizer, max_documents)
    records = build_examples(shard, random.Random(seed), ExampleSettings(max_seq_length=max_length))
    records = records[np.random.default_rng(seed).permutation(len(records))][:max(examples, count_examples)]
    batch = collate([(shard, r) for r in records], cls_id=tokenizer.cls_id, sep_id=tokenizer.sep_id,
                    pad_id=tokenizer.pad_id)
    masked = BatchMasker(MaskingSettings(), tokenizer)(batch, seed)
    for row in range(min(examples, len(records))):
        print(f"--- example {row + 1}: " + describe(tokenizer, batch, masked, row) + "\n")
    shares = tally(corruption_kinds(batch, masked, tokenizer.mask_id), batch.special_tokens_mask, batch.nsp_labels)
    print(f"over {shares['examples']:,} examples from {shard.num_documents} documents: {shares['chosen']:.1%} of the "
          f"tokens chosen; of those {shares['mask']:.1%} [MASK], {shares['random']:.1%} random, "
          f"{shares['kept']:.1%} unchanged; {shares['is_next']:.1%} IsNext")
    return shares
