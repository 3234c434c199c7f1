"""Kaggle "NLP with Disaster Tweets" end to end with the CLI: k-fold cross-validated F1 (the competition's
metric), then a model on all the training tweets and a `submission.csv` checked against the competition's
format (header `id,target`, every test id once, in order, targets 0/1).

    python benchmarks/bench_finetune_tweets.py --folds 5 --epochs 2 --output-dir /work/runs/tweets
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import subprocess
import sys
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "disaster_tweets"


def write(path: Path, rows: list[dict], columns: list[str]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def bertforge(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "bertforge", *args], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--max-folds", type=int, default=0, help="run only the first N folds (0 = all)")
    parser.add_argument("--epochs", default="2")
    parser.add_argument("--train-examples", type=int, default=0,
                        help="train each fold on only the first N of its training tweets (0 = all; small CPUs)")
    parser.add_argument("--learning-rate", default="5e-5")
    parser.add_argument("--batch-size", default="32")
    parser.add_argument("--threads", default="1")
    parser.add_argument("--final", choices=("all", "fold0", "none"), default="all",
                        help="submission from a model trained on all tweets, from fold 0's model, or none")
    parser.add_argument("--output-dir", type=Path, default=Path("/tmp/bertforge-tweets"))
    args = parser.parse_args()
    out = args.output_dir
    out.mkdir(parents=True, exist_ok=True)
    with (DATA / "train.csv").open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    columns = list(rows[0])
    order = list(range(len(rows)))
    random.Random(0).shuffle(order)
    common = ["--task", "classification", "--text-column", "text", "--label-column", "target", "--epochs",
              args.epochs, "--learning-rate", args.learning_rate, "--batch-size", args.batch_size,
              "--num-threads", args.threads, "--progress",
              "false", "--tensorboard", "false", "--overwrite", "true"]  # a rerun replaces its runs
    scores = []
    for k in range(args.max_folds or args.folds):
        held = set(order[k :: args.folds])
        kept = [r for i, r in enumerate(rows) if i not in held]
        train = write(out / f"fold{k}_train.csv", kept[: args.train_examples or None], columns)
        dev = write(out / f"fold{k}_dev.csv", [r for i, r in enumerate(rows) if i in held], columns)
        bertforge("finetune", "--output-dir", str(out / f"fold{k}"), "--train", str(train), "--validation",
                  str(dev), *common)
        best = json.loads((out / f"fold{k}" / "best_metrics.json").read_text())
        scores.append({"fold": k, "f1": best[f"{dev.stem}/f1"], "accuracy": best[f"{dev.stem}/accuracy"]})
        print(json.dumps(scores[-1]), flush=True)
    mean_f1 = sum(s["f1"] for s in scores) / len(scores)
    print(f"cross-validated F1 over {len(scores)} of {args.folds} folds: {mean_f1:.4f}", flush=True)
    report = {"folds": scores, "mean_f1": mean_f1, "args": {k: str(v) for k, v in vars(args).items()}}
    if args.final != "none":
        if args.final == "all":
            bertforge("finetune", "--output-dir", str(out / "final"), "--train", str(DATA / "train.csv"), *common)
        model = out / ("final" if args.final == "all" else "fold0")
        bertforge("predict", "--model", str(model), "--input", str(DATA / "test.csv"), "--text-column",
                  "text", "--id-column", "id", "--label-output-column", "target", "--probabilities", "false",
                  "--output", str(out / "submission.csv"))
        report["submission_check"] = check_submission(out / "submission.csv")
        print("submission.csv:", report["submission_check"])
    (out / "tweets_results.json").write_text(json.dumps(report, indent=2) + "\n")


def check_submission(path: Path) -> str:
    with (DATA / "sample_submission.csv").open(encoding="utf-8", newline="") as handle:
        sample = list(csv.reader(handle))
    with path.open(encoding="utf-8", newline="") as handle:
        ours = list(csv.reader(handle))
    assert ours[0] == sample[0] == ["id", "target"], (ours[0], sample[0])
    assert [r[0] for r in ours[1:]] == [r[0] for r in sample[1:]], "ids differ from sample_submission.csv"
    assert {r[1] for r in ours[1:]} <= {"0", "1"}, "targets must be 0 or 1"
    return f"ok: {len(ours) - 1} rows, header id,target, ids in sample_submission order, targets 0/1"


if __name__ == "__main__":
    main()
