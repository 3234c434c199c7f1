"""What `--precision` costs in accuracy: each precision against fp32 on real tasks.

    python benchmarks/precision_accuracy.py --precisions bf16 int8 \
        [--sst2-model runs/transfer_bf16/pretrained/sst2/seed42/run] \
        [--ner-model runs/transfer_bf16/pretrained/ner/seed42/run]

- all-MiniLM-L6-v2 sentence vectors (mean pooling, unit length) of the STS-B dev sentences: mean and least
  cosine to the fp32 vectors, and the Spearman correlation of the pair cosines with the gold scores;
- with a fine-tuned SST-2 model: dev accuracy; with a fine-tuned CoNLL-2003 NER model: validation entity F1
  (both through `bertforge.training.finetune_evaluate.run`, the code behind `bertforge evaluate`).

Accuracy only: the machine need not be quiet. bf16 runs where the processor computes it natively.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from bench_inference import required_stsb_pairs, spearman

from bertforge.checkpoint import load_model
from bertforge.hardware import bf16_skip_reason
from bertforge.inference.embed import embed_texts
from bertforge.pretrained import resolve_model
from bertforge.tokenizer import BertTokenizer
from bertforge.training import finetune_evaluate

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def sentence_rows(data: Path, precisions: list[str]) -> list[str]:
    directory = resolve_model("all-minilm-l6-v2")
    model, tok = load_model(directory), BertTokenizer.from_pretrained(directory)
    first, second, gold = required_stsb_pairs(data)
    vectors = {p: [embed_texts(model, tok, side, normalize=True, precision=p).vectors for side in (first, second)]
               for p in ["fp32", *precisions]}
    rows = []
    for p, (a, b) in vectors.items():
        cosine = np.concatenate([(a * vectors["fp32"][0]).sum(-1), (b * vectors["fp32"][1]).sum(-1)])
        rows.append(f"| {p} | {cosine.mean():.5f} | {cosine.min():.5f} | {100 * spearman((a * b).sum(-1), gold):.2f} |")
    return rows


def task_metric(model: Path, data: Path, metric: str, precision: str) -> float:
    return 100 * finetune_evaluate.run(str(model), finetune_evaluate.EvaluationData(input=data),
                                       precision=precision)[metric]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--precisions", nargs="+", default=["bf16", "int8"], choices=("bf16", "int8"))
    parser.add_argument("--data", type=Path, default=DATA, help="folder with glue/ and conll2003/")
    parser.add_argument("--sst2-model", type=Path, help="a model fine-tuned on SST-2")
    parser.add_argument("--ner-model", type=Path, help="a model fine-tuned on CoNLL-2003 NER")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    for option, model in (("--sst2-model", args.sst2_model), ("--ner-model", args.ner_model)):
        if model is not None and not (model / "config.json").is_file():
            parser.error(f"{option} {model}: not a model folder (no config.json); give a fine-tuned run's folder")
    torch.set_num_threads(args.threads)
    skipped = [p for p in args.precisions if p == "bf16" and bf16_skip_reason() is not None]
    for p in skipped:
        print(f"{p}: {bf16_skip_reason()}")
    precisions = [p for p in args.precisions if p not in skipped]
    print("all-MiniLM-L6-v2, STS-B dev sentences\n\n| precision | mean cosine to fp32 | least | STS-B Spearman |\n"
          "|---|---|---|---|")
    print("\n".join(sentence_rows(args.data, precisions)))
    tasks = [(args.sst2_model, args.data / "glue" / "SST-2" / "dev.tsv", "accuracy", "SST-2 dev accuracy"),
             (args.ner_model, args.data / "conll2003" / "valid.txt", "f1", "CoNLL-2003 valid F1")]
    for model, data, metric, label in tasks:
        if model is not None:
            scores = {p: task_metric(model, data, metric, p) for p in ["fp32", *precisions]}
            print(f"\n{label} of {model}: " + ", ".join(f"{p} {v:.2f}" for p, v in scores.items()))


if __name__ == "__main__":
    main()
