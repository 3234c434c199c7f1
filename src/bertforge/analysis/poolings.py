"""Why [CLS]? Sentence vectors from [CLS], the pooler and mean pooling, compared on a real similarity
task: STS-B dev, Spearman correlation between cosine similarity and the human score (no fine-tuning)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from bertforge.inference.embed import embed_texts
from bertforge.model import BertModel
from bertforge.tokenizer import BertTokenizer

VARIANTS = {  # name -> embed_texts options
    "[CLS] (last layer)": {"pooling": "cls"},
    "pooler tanh(W·[CLS])": {"pooling": "pooled"},
    "mean (last layer)": {"pooling": "mean"},
    "mean (first + last layer)": {"pooling": "mean", "layers": [1, -1], "combine": "mean"},
}


def sts_spearman(model: BertModel, tokenizer: BertTokenizer, firsts: list[str], seconds: list[str],
                 scores: list[float]) -> dict[str, float]:
    """Spearman ρ × 100 of cos(u, v) against the gold scores, for each pooling variant."""
    from bertforge.tasks.classification import spearman

    results = {}
    for name, options in VARIANTS.items():
        u = embed_texts(model, tokenizer, firsts, normalize=True, **options).vectors
        v = embed_texts(model, tokenizer, seconds, normalize=True, **options).vectors
        results[name] = 100 * spearman((u * v).sum(axis=1).tolist(), scores)
    return results


def run(model: str = "all-minilm-l6-v2", input: Path = Path("../shared/data/glue/STS-B/dev.tsv"),
        output: Path | None = None) -> dict[str, dict[str, float]]:
    """Compare [CLS], pooled and mean-pooled sentence vectors on STS-B (Spearman × 100), trained vs random.

    Args:
        model: A model directory, or all-minilm-l6-v2 (the packaged checkpoint).
        input: The STS-B dev.tsv (GLUE layout).
        output: Optional markdown file for the table.
    """
    from bertforge.checkpoint import load_model
    from bertforge.pretrained import resolve_model
    from bertforge.tasks.classification import read_glue

    examples = read_glue("stsb", input)
    firsts, seconds = [e.text for e in examples], [e.pair for e in examples]
    scores = [float(e.label) for e in examples]
    directory = resolve_model(model)
    tokenizer = BertTokenizer.from_pretrained(directory)
    trained = load_model(directory)
    torch.manual_seed(0)
    random_model = BertModel(trained.config).eval()
    table = {"pre-trained": sts_spearman(trained, tokenizer, firsts, seconds, scores),
             "random init": sts_spearman(random_model, tokenizer, firsts, seconds, scores)}
    lines = [f"STS-B dev ({len(examples)} pairs), Spearman ρ × 100 of cosine similarity, model {model}",
             "", "| sentence vector | pre-trained | random init |", "|---|---:|---:|"]
    lines += [f"| {name} | {table['pre-trained'][name]:.1f} | {table['random init'][name]:.1f} |" for name in VARIANTS]
    text = "\n".join(lines)
    print(text)
    if output is not None:
        Path(output).write_text(text + "\n", encoding="utf-8")
    best = max(table["pre-trained"], key=table["pre-trained"].get)
    print(f"\nbest: {best} ({np.round(table['pre-trained'][best], 1)})")
    return table
