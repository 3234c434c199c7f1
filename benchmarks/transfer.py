"""Does pre-training transfer? Fine-tune a pre-trained model and the same architecture untrained (the
floor) on SST-2, STS-B, MRPC and CoNLL-2003 NER with several seeds, and report mean ± std per side.

    python benchmarks/transfer.py --model runs/wiki_budget_60/model --output-dir runs/transfer \
        --seeds 42 1 2 --jobs 2 --report docs/results/transfer.md
    ... --precision bf16    # both sides fine-tune under bf16 autocast (CPUs with AMX / AVX-512 BF16, GPUs)
    ... --dropout 0 --epochs 4    # other fine-tuning settings, the same for both sides

The floor is built once from the model's own config.json and vocabulary with fresh BERT initialisation,
so the two sides differ only in the pre-trained weights. Each fine-tuning run is its own process (one
torch thread; `--jobs` of them at a time: accuracy, not speed, is measured here), picks its best epoch
on the dev set (GLUE dev, CoNLL valid) as GLUE results conventionally do, and writes result.json;
finished runs are read back, so an interrupted sweep resumes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
# task -> (finetune task, data folder, training examples (None = all), epochs, metric reported)
TASKS: dict[str, tuple[str, Path, int | None, float, str]] = {
    "sst2": ("sst2", DATA / "glue" / "SST-2", 20000, 2, "accuracy"),
    "stsb": ("stsb", DATA / "glue" / "STS-B", None, 3, "spearman"),
    "mrpc": ("mrpc", DATA / "glue" / "MRPC", None, 3, "f1"),
    "ner": ("ner", DATA / "conll2003", 4000, 3, "f1"),
}


def build_floor(model_dir: Path, out: Path, seed: int = 0) -> Path:
    """The same architecture and vocabulary as `model_dir`, freshly initialised (BERT's N(0, 0.02))."""
    if (out / "config.json").is_file():
        return out
    import torch

    from bertforge.checkpoint import load_model, save_model
    from bertforge.heads import BertForMaskedLM
    from bertforge.tokenizer import BertTokenizer

    config = load_model(model_dir, BertForMaskedLM).config
    torch.manual_seed(seed)
    save_model(BertForMaskedLM(config), out, tokenizer=BertTokenizer.from_pretrained(model_dir))
    return out


def finetune_one(task: str, model: Path, seed: int, out: Path, args: argparse.Namespace) -> dict:
    """Run in a child process: one fine-tuning run, its best dev epoch written to out/result.json."""
    from bertforge.training import finetune
    from bertforge.training.finetune_loop import TrainSettings

    name, data_dir, examples, epochs, _ = TASKS[task]
    epochs = args.epochs or epochs
    if task == "sst2":
        examples = args.sst2_examples or None  # 0: all 67,349
    result = finetune.run(out / "run", task=name, model=str(model),
                          data=finetune.DataSettings(data_dir=data_dir, max_train_examples=examples),
                          train=TrainSettings(epochs=epochs, learning_rate=args.learning_rate,
                                              batch_size=args.batch_size, dropout=args.dropout, seed=seed),
                          threads=1, precision=args.precision, progress=False, tensorboard=False, overwrite=True)
    best = next(h for h in result.history if h["epoch"] == result.best_epoch)
    (out / "result.json").write_text(json.dumps({"task": task, "seed": seed, "model": str(model), **best}, indent=2))
    return best


def launch(task: str, side: str, model: Path, seed: int, args: argparse.Namespace) -> dict:
    out = args.output_dir / side / task / f"seed{seed}"
    if not (out / "result.json").is_file():
        command = [sys.executable, __file__, "--one", task, str(model), str(seed), str(out),
                   "--learning-rate", str(args.learning_rate), "--batch-size", str(args.batch_size),
                   "--precision", args.precision, "--dropout", str(args.dropout),
                   "--sst2-examples", str(args.sst2_examples)]
        if args.epochs:
            command += ["--epochs", str(args.epochs)]
        out.mkdir(parents=True, exist_ok=True)
        with (out / "log.txt").open("w") as log:
            subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT)
    record = json.loads((out / "result.json").read_text())
    metric = next(v for k, v in record.items() if k.endswith("/" + TASKS[task][4]))
    print(f"{side:>10} {task:<5} seed {seed}: {TASKS[task][4]} {metric:.4f}", flush=True)
    return {"task": task, "side": side, "seed": seed, "metric": metric}


def table(rows: list[dict], args: argparse.Namespace) -> str:
    lines = ["| task (metric, dev) | pre-trained | floor (untrained) | gap | seed std (pre-trained / floor) |",
             "|---|---|---|---|---|"]
    for task in args.tasks:
        values = {side: [100 * r["metric"] for r in rows if r["task"] == task and r["side"] == side]
                  for side in ("pretrained", "floor")}
        mean = {side: statistics.mean(v) for side, v in values.items()}
        std = {side: statistics.stdev(v) if len(v) > 1 else 0.0 for side, v in values.items()}
        lines.append(f"| {task} ({TASKS[task][4]}) | {mean['pretrained']:.2f} ± {std['pretrained']:.2f} | "
                     f"{mean['floor']:.2f} ± {std['floor']:.2f} | {mean['pretrained'] - mean['floor']:+.2f} | "
                     f"{std['pretrained']:.2f} / {std['floor']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="a pre-trained Hugging Face-format BERT folder")
    parser.add_argument("--output-dir", type=Path, default=Path("runs/transfer"))
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[42, 1, 2])
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=float, default=None,
                        help="for every task (default: each task's own, in TASKS)")
    parser.add_argument("--dropout", type=float, default=0.1,
                        help="of the fine-tuning, both sides (0 matches the budget recipe's pre-training)")
    parser.add_argument("--precision", choices=("fp32", "bf16", "auto"), default="fp32",
                        help="of the fine-tuning, both sides (bf16: autocast, where the hardware has it natively)")
    parser.add_argument("--sst2-examples", type=int, default=TASKS["sst2"][2],
                        help="SST-2 training sentences, the first N (0: all 67,349)")
    parser.add_argument("--jobs", type=int, default=2, help="fine-tuning processes at a time (1 thread each)")
    parser.add_argument("--report", type=Path, help="write the markdown table here")
    parser.add_argument("--one", nargs=4, metavar=("TASK", "MODEL", "SEED", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        task, model, seed, out = args.one
        finetune_one(task, Path(model), int(seed), Path(out), args)
        return
    if args.model is None:
        parser.error("--model is required")
    if not (args.model / "config.json").is_file():
        parser.error(f"--model {args.model}: no config.json there; give a Hugging Face-format BERT folder "
                     "(a pre-training run's model/ folder)")
    if args.epochs is not None and args.epochs <= 0:
        parser.error(f"--epochs {args.epochs:g}: give a positive number of passes (e.g. 3), or leave it out")
    if args.sst2_examples < 0:
        parser.error(f"--sst2-examples {args.sst2_examples}: give a number of sentences, or 0 for all of them")
    if not 0 <= args.dropout < 1:
        parser.error(f"--dropout {args.dropout:g}: give a probability in [0, 1), e.g. 0.1 or 0")
    floor = build_floor(args.model, args.output_dir / "floor_model")
    jobs = [(task, side, model, seed) for task in args.tasks for seed in args.seeds
            for side, model in (("pretrained", args.model), ("floor", floor))]
    with ThreadPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(lambda job: launch(*job, args), jobs))
    text = table(rows, args)
    print(text)
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(text + "\n")
    (args.output_dir / "transfer.json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
