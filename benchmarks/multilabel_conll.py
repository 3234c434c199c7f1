"""A multi-label result on real data: which entity types (PER, LOC, ORG, MISC) does a CoNLL-2003 sentence
mention? Each sentence gets the set of types of its entities (possibly empty), so one sentence can carry
several labels at once, and the model is fine-tuned with `--task multilabel` (sigmoid per label, BCE loss,
saved with transformers' problem_type multi_label_classification).

    python benchmarks/multilabel_conll.py --output-dir runs/multilabel --train-sentences 4000 --epochs 3

Writes train.jsonl / valid.jsonl ({"text", "types"}) in the output folder, fine-tunes with the ordinary
`bertforge finetune` command (printed), and prints micro-F1 and subset accuracy on CoNLL's validation
sentences beside a baseline that needs no model: the training set's most frequent label set predicted for
every sentence.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from collections import Counter
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "conll2003"


def sentences(path: Path) -> list[tuple[str, list[str]]]:
    """(text, sorted entity types) per sentence of a CoNLL file (`word POS chunk TAG`, blank-line separated)."""
    out, words, types = [], [], set()
    for line in [*path.read_text(encoding="utf-8").splitlines(), ""]:
        if not line.strip() or line.startswith("-DOCSTART-"):
            if words:
                out.append((" ".join(words), sorted(types)))
            words, types = [], set()
            continue
        word, *_, tag = line.split()
        words.append(word)
        if tag != "O":
            types.add(tag.split("-", 1)[1])
    return out


def write_jsonl(rows: list[tuple[str, list[str]]], path: Path) -> None:
    path.write_text("".join(json.dumps({"text": text, "types": types}) + "\n" for text, types in rows),
                    encoding="utf-8")


def micro_f1_and_subset(gold: list[list[str]], predicted: list[list[str]]) -> tuple[float, float]:
    true_pos = sum(len(set(g) & set(p)) for g, p in zip(gold, predicted, strict=True))
    n_pred, n_gold = sum(map(len, predicted)), sum(map(len, gold))
    f1 = 2 * true_pos / (n_pred + n_gold) if n_pred + n_gold else 1.0
    subset = sum(set(g) == set(p) for g, p in zip(gold, predicted, strict=True)) / len(gold)
    return f1, subset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=DATA, help="the CoNLL-2003 folder (train.txt, valid.txt)")
    parser.add_argument("--model", default="all-minilm-l6-v2")
    parser.add_argument("--train-sentences", type=int, default=4000)
    parser.add_argument("--epochs", type=float, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=5e-5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()

    args.output_dir.mkdir(parents=True, exist_ok=True)
    train = sentences(args.data / "train.txt")[: args.train_sentences]
    valid = sentences(args.data / "valid.txt")
    write_jsonl(train, args.output_dir / "train.jsonl")
    write_jsonl(valid, args.output_dir / "valid.jsonl")
    sets = Counter(tuple(types) for _, types in train)
    print(f"{len(train)} training sentences, {len(valid)} validation; label sets in training: "
          + ", ".join(f"{'+'.join(s) or '(none)'} {n}" for s, n in sets.most_common(6)))
    frequent = list(sets.most_common(1)[0][0])
    f1, subset = micro_f1_and_subset([t for _, t in valid], [frequent] * len(valid))
    print(f"baseline, the most frequent label set ({'+'.join(frequent) or 'none'}) everywhere: "
          f"micro-F1 {100 * f1:.2f}, subset accuracy {100 * subset:.2f}")

    command = [sys.executable, "-m", "bertforge", "finetune", "--task", "multilabel", "--model", args.model,
               "--train", str(args.output_dir / "train.jsonl"), "--validation", str(args.output_dir / "valid.jsonl"),
               "--text-column", "text", "--label-column", "types", "--output-dir", str(args.output_dir / "run"),
               "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--learning-rate",
               str(args.learning_rate), "--threads", str(args.threads), "--seed", str(args.seed),
               "--progress", "false", "--overwrite", "true"]
    print("$ " + shlex.join(command), flush=True)
    subprocess.run(command, check=True)
    best = json.loads((args.output_dir / "run" / "best_metrics.json").read_text())
    print("fine-tuned, best validation epoch: " + json.dumps(best))


if __name__ == "__main__":
    main()
