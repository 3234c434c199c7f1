"""What do frozen models know about sentiment? A logistic regression on SST-2 (the first N training
sentences), read on the dev set, over:

- a bag of WordPiece tokens (the vocabulary of the first model): the figure a model that knows only which
  words a sentence holds can reach;
- each model's frozen features: mean-pooled over the tokens, from the last layer, from every layer
  (concatenated), from the input embeddings, and the last layer's [CLS].

    python benchmarks/probe_sst2.py --models runs/wiki_fast_p1/model runs/transfer_fast_p1/floor_model

A fine-tuned model that only matches the bag of words has learned nothing from pre-training that the
training sentences did not already give it. The L2 strength of each regression is picked on the dev set
from a small grid (the same grid for every row), so the figures are a ceiling for each kind of feature.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue" / "SST-2"
L2_GRID = (1e-4, 1e-3, 1e-2)  # per-example weight decay of the logistic regression


def read_sst2(path: Path, limit: int | None) -> tuple[list[str], torch.Tensor]:
    from bertforge.tasks.classification import read_glue

    examples = read_glue("sst2", path)[:limit]
    return [e.text for e in examples], torch.tensor([float(e.label) for e in examples])


def logistic_accuracy(train_x, train_y, dev_x, dev_y, l2: float) -> float:
    """Full-batch L-BFGS on the mean log-loss plus l2 · |w|²; dev accuracy. `*_x` are dense features or,
    for a bag of words, (ids, offsets) pairs that an EmbeddingBag sums."""
    bag = isinstance(train_x, tuple)
    width = 1 + max(int(train_x[0].max()), int(dev_x[0].max())) if bag else train_x.shape[1]
    weight = torch.zeros(width, requires_grad=True)
    bias = torch.zeros((), requires_grad=True)

    def logits(x):
        if bag:
            return F.embedding_bag(x[0], weight[:, None], x[1], mode="sum")[:, 0] + bias
        return x @ weight + bias

    optimizer = torch.optim.LBFGS([weight, bias], max_iter=500, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.binary_cross_entropy_with_logits(logits(train_x), train_y) + l2 * weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        return float(((logits(dev_x) > 0).float() == dev_y).float().mean())


def best_accuracy(train_x, train_y, dev_x, dev_y) -> tuple[float, float]:
    return max((logistic_accuracy(train_x, train_y, dev_x, dev_y, l2), l2) for l2 in L2_GRID)


def bag_of_tokens(tokenizer, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Each sentence's distinct token ids (a binary bag), as EmbeddingBag's flat ids and offsets."""
    ids, offsets = [], []
    for pieces in tokenizer.encode(texts, add_special_tokens=False).input_ids:
        offsets.append(len(ids))
        ids.extend(sorted(set(pieces)))
    return torch.tensor(ids), torch.tensor(offsets)


def frozen_features(model_dir: Path, texts: list[str]) -> dict[str, torch.Tensor]:
    from bertforge.checkpoint import load_model
    from bertforge.heads import BertForMaskedLM
    from bertforge.inference.embed import embed_texts
    from bertforge.tokenizer import BertTokenizer

    bert = load_model(model_dir, BertForMaskedLM).bert.eval()
    tokenizer = BertTokenizer.from_pretrained(model_dir)
    layers = bert.config.num_layers
    kinds = {"mean, last layer": ("mean", [-1]), "mean, every layer": ("mean", list(range(1, layers + 1))),
             "mean, input embeddings": ("mean", [0]), "[CLS], last layer": ("cls", [-1])}
    return {name: torch.from_numpy(embed_texts(bert, tokenizer, texts, pooling=pooling, layers=chosen,
                                               precision="bf16").vectors)
            for name, (pooling, chosen) in kinds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=Path, nargs="+", required=True,
                        help="Hugging Face-format BERT folders (e.g. a pre-trained model and its floor)")
    parser.add_argument("--train-examples", type=int, default=20000, help="the first N training sentences")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    for model in args.models:
        if not (model / "config.json").is_file():
            parser.error(f"--models {model}: no config.json there; give a Hugging Face-format BERT folder")
    if args.train_examples <= 0:
        parser.error(f"--train-examples {args.train_examples}: give a positive number, e.g. 20000")
    if not DATA.is_dir():
        sys.exit(f"SST-2 not found at {DATA}: see ../shared/data/README.md")
    torch.set_num_threads(args.threads)
    from bertforge.tokenizer import BertTokenizer

    train_texts, train_y = read_sst2(DATA / "train.tsv", args.train_examples)
    dev_texts, dev_y = read_sst2(DATA / "dev.tsv", None)
    tokenizer = BertTokenizer.from_pretrained(args.models[0])
    accuracy, l2 = best_accuracy(bag_of_tokens(tokenizer, train_texts), train_y,
                                 bag_of_tokens(tokenizer, dev_texts), dev_y)
    print(f"| bag of WordPiece tokens | – | {100 * accuracy:.2f} | {l2:g} |", flush=True)
    for model in args.models:
        train_features, dev_features = frozen_features(model, train_texts), frozen_features(model, dev_texts)
        for kind, train_x in train_features.items():
            mean, std = train_x.mean(0), train_x.std(0) + 1e-6
            accuracy, l2 = best_accuracy((train_x - mean) / std, train_y, (dev_features[kind] - mean) / std, dev_y)
            print(f"| {model} | {kind} | {100 * accuracy:.2f} | {l2:g} |", flush=True)


if __name__ == "__main__":
    main()
