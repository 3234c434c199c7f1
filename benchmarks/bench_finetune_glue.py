"""GLUE runs with the official metrics (CoLA Matthews, MRPC F1/accuracy, STS-B Pearson/Spearman, RTE
accuracy, ...) through the same `finetune.run` the CLI uses. Small CPUs: cap the training set with
--train-examples (0 = all); dev sets are always complete.

    python benchmarks/bench_finetune_glue.py --tasks mrpc stsb cola rte --train-examples 2000 --epochs 1
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from bertforge.training import finetune
from bertforge.training.finetune_loop import TrainSettings

FOLDERS = {"cola": "CoLA", "sst2": "SST-2", "mrpc": "MRPC", "stsb": "STS-B", "rte": "RTE", "wnli": "WNLI",
           "qnli": "QNLI"}
DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=["mrpc", "stsb", "cola", "rte"], choices=sorted(FOLDERS))
    parser.add_argument("--model", default="all-minilm-l6-v2")
    parser.add_argument("--train-examples", type=int, default=2000)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--learning-rate", type=float, default=5e-5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output-dir", type=Path, default=Path("/tmp/bertforge-glue"))
    args = parser.parse_args()
    results = {}
    for task in args.tasks:
        started = time.perf_counter()
        data = finetune.DataSettings(data_dir=DATA / FOLDERS[task], max_train_examples=args.train_examples or None)
        train = TrainSettings(epochs=args.epochs, learning_rate=args.learning_rate, batch_size=args.batch_size,
                              seed=args.seed)
        result = finetune.run(args.output_dir / task, task=task, model=args.model, data=data,
                              inputs=finetune.InputSettings(max_length=args.max_seq_length), train=train,
                              threads=args.threads, progress=False, tensorboard=False,
                              overwrite=True)  # a rerun replaces its runs
        best = next(h for h in result.history if h["epoch"] == result.best_epoch)
        results[task] = {k: v for k, v in best.items() if "/" in k} | {"seconds": time.perf_counter() - started}
        print(task, json.dumps(results[task]), flush=True)
    (args.output_dir / "glue_results.json").write_text(json.dumps({"args": vars(args), "results": results},
                                                                  indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
