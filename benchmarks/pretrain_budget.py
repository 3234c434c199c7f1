"""Held-out MLM accuracy per CPU-minute: today's defaults (`--recipe bert`), the budget recipe, and the
recipe with one choice undone at a time, each pre-trained for the same wall-clock budget on one corpus.

Run it on a quiet machine (nothing else running): every variant is a real `bertforge pretrain` run with
`--max-minutes`, so the step count each reaches depends on its own speed, and accuracy per minute is what
is compared. Finished variants are read back from their run folders, so an interrupted sweep resumes.

    python benchmarks/pretrain_budget.py --data runs/wiki16k --minutes 4 --output-dir runs/budget \
        --report docs/results/pretraining_budget.md

Writes a markdown table (accuracy where the input shows [MASK], the conventional all-selected-positions
figure beside it, steps, tokens/s) and a plot of accuracy against minutes.

With `--presets`, every variant runs at each model size (in OUTPUT/PRESET/VARIANT), and one table and one
plot hold them all: which size a budget should buy, and whether the recipe's lead holds at each.

    python benchmarks/pretrain_budget.py --data runs/wiki16k --minutes 10 --variants bert budget \
        --presets tiny mini small --output-dir runs/sizes --report runs/sizes.md

On a machine that is not quiet, compare at equal steps instead, which load does not change: every variant
plans the same schedule (`--steps`) and is ended once its held-out evaluation at `--stop-at-step` is
written (same data order, masks and learning rate up to that step). Minutes then come from each variant's
seconds per step measured on a quiet machine (`benchmarks/bench_recipe_speed.py`), not from these runs.

    python benchmarks/pretrain_budget.py --data runs/wiki16k --steps 1693 --stop-at-step 250 \
        --output-dir runs/sweep250 --report runs/sweep250.md --common --preset mini --eval-every 125
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

from bertforge.config import PRESETS

# name -> (what it shows, pretrain options on top of the common ones)
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "bert": ("today's defaults: MLM + NSP pairs, 15% masking, dropout 0.1, lr 5e-4, fp32",
             ["--recipe", "bert"]),
    "budget": ("the budget recipe", ["--recipe", "budget"]),
    "budget_nsp_pairs": ("recipe with MLM + NSP on sentence pairs (no packing)",
                         ["--recipe", "budget", "--objective", "mlm_nsp", "--packing", "false"]),
    "budget_unpacked": ("recipe without packing (one window of whole sentences per row, padded)",
                        ["--recipe", "budget", "--packing", "false"]),
    "budget_mask15": ("recipe with 15% masking", ["--recipe", "budget", "--masking-rate", "0.15"]),
    "budget_mask40": ("recipe with 40% masking", ["--recipe", "budget", "--masking-rate", "0.4"]),
    "budget_dropout": ("recipe with dropout 0.1", ["--recipe", "budget", "--dropout", "0.1"]),
    "budget_fp32": ("recipe in fp32", ["--recipe", "budget", "--precision", "fp32"]),
    "budget_lr5e-4": ("recipe at lr 5e-4", ["--recipe", "budget", "--lr", "5e-4"]),
    "budget_lr2e-3": ("recipe at lr 2e-3", ["--recipe", "budget", "--lr", "2e-3"]),
    "budget_random_attention": ("recipe with BERT's random attention start (no local heads)",
                                ["--recipe", "budget", "--attention-init", "random"]),
}


def run_variant(name: str, options: list[str], out: Path, args: argparse.Namespace) -> Path:
    if finished(out, args):
        print(f"{name}: done earlier, read from {out}")
        return out
    length = ["--steps", str(args.steps)] if args.steps else ["--max-minutes", str(args.minutes)]
    command = [sys.executable, "-m", "bertforge", "pretrain", "--data", str(args.data), "--output-dir", str(out),
               *length, "--threads", str(args.threads), "--eval-batches", str(args.eval_batches),
               "--progress", "false", "--tensorboard", "false", "--seed", str(args.seed), "--overwrite", "true",
               *args.common, *options]
    print("$ " + shlex.join(command), flush=True)
    process = subprocess.Popen(command)
    while process.poll() is None:
        if args.stop_at_step and finished(out, args):
            process.terminate()  # its evaluation at the step is written; the rest of the plan is not needed
            process.wait()
            return out
        time.sleep(5)
    if process.returncode != 0:
        raise SystemExit(f"{name}: pretrain exited with {process.returncode}")
    return out


def finished(out: Path, args: argparse.Namespace) -> bool:
    """A full run has exported its model; a step-limited one has its held-out record at the stop step."""
    if not args.stop_at_step:
        return (out / "model" / "config.json").is_file()
    metrics = out / "metrics.jsonl"
    if not metrics.is_file():
        return False
    for line in metrics.read_text().splitlines():
        record = json.loads(line) if line.strip().endswith("}") else {}
        if record.get("split") == "heldout" and record.get("step", 0) >= args.stop_at_step:
            return True
    return False


def summary(out: Path) -> dict:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()
               if line.strip().endswith("}")]  # a run ended mid-write leaves a partial last line
    heldout = [r for r in records if r["split"] == "heldout"]
    train = [r for r in records if r["split"] == "train"]
    config = json.loads((out / "config.json").read_text())
    speed = sorted(r["tokens_per_s"] for r in train[1:])  # the first window includes start-up
    return {"curve": [(r["minutes"], r.get("mlm_mask_accuracy"), r["mlm_accuracy"], r["step"]) for r in heldout],
            "final": heldout[-1], "steps": heldout[-1]["step"], "config": config,
            "tokens_per_s": speed[len(speed) // 2] if speed else None}


def sweep(args: argparse.Namespace) -> dict[tuple[str | None, str], dict]:
    """Every variant's summary, keyed by (preset, variant); the preset is None without `--presets`."""
    results = {}
    for preset in args.presets or [None]:
        folder = args.output_dir / preset if preset else args.output_dir
        size = ["--preset", preset] if preset else []
        for name in args.variants:
            results[preset, name] = summary(run_variant(name, [*VARIANTS[name][1], *size], folder / name, args))
    return results


def shape(config: dict) -> str:
    """`L4/H256` from a run's config.json: its preset, with any model override applied."""
    layers, hidden, _ = PRESETS[config["preset"]]
    overrides = config.get("model_overrides") or {}
    return f"L{overrides.get('num_layers', layers)}/H{overrides.get('hidden_size', hidden)}"


def report(results: dict[tuple[str | None, str], dict]) -> str:
    lines = ["| variant | model | what | steps | tokens/s | MLM acc. at [MASK] | MLM acc. all selected | loss |",
             "|---|---|---|---|---|---|---|---|"]
    for (preset, name), res in results.items():
        final = res["final"]
        mask = final.get("mlm_mask_accuracy")
        model = f"{preset} ({shape(res['config'])})" if preset else shape(res["config"])
        lines.append(f"| {name} | {model} | {VARIANTS[name][0]} | {res['steps']:,} | {res['tokens_per_s'] or 0:,.0f} | "
                     f"{100 * mask:.1f}% | {100 * final['mlm_accuracy']:.1f}% | {final['mlm_loss']:.3f} |")
    return "\n".join(lines)


def plot(results: dict[tuple[str | None, str], dict], path: Path, by_step: bool) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axis = plt.subplots(figsize=(8, 5))
    presets = list(dict.fromkeys(preset for preset, _ in results))
    for (preset, name), res in results.items():
        x = [step if by_step else minutes for minutes, _, _, step in res["curve"]]
        accuracy = [100 * (a or 0) for _, a, _, _ in res["curve"]]
        style = {"linewidth": 2.5 if name in ("budget", "bert") else 1,
                 "linestyle": "--" if name == "bert" else "-"}
        if preset:  # one colour a size; the variant shows in the line style
            style["color"] = f"C{presets.index(preset)}"
        label = f"{preset} ({shape(res['config'])}), {name}" if preset else name
        axis.plot(x, accuracy, "o" if name in ("budget", "bert") else ".", label=label, **style)
    axis.set(xlabel="optimizer step (same plan for every variant)" if by_step else
             "training minutes (wall clock, 2 CPU cores)", ylabel="held-out MLM accuracy at [MASK] (%)",
             title="held-out MLM accuracy against " + ("steps" if by_step else "time"))
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="a folder from `bertforge prepare`")
    parser.add_argument("--output-dir", type=Path, default=Path("runs/budget"))
    parser.add_argument("--minutes", type=float, default=4.0, help="wall-clock budget per variant")
    parser.add_argument("--steps", type=int, help="plan this many steps for every variant instead of --minutes")
    parser.add_argument("--stop-at-step", type=int, help="with --steps: end each run after its held-out "
                        "evaluation at this step (pass --eval-every in --common so that one falls on it)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--presets", nargs="+", choices=list(PRESETS),
                        help="run every variant at each of these model sizes (OUTPUT/PRESET/VARIANT)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--eval-batches", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--common", nargs=argparse.REMAINDER, default=[],
                        help="further pretrain options for every variant (e.g. --preset mini), last on the line")
    parser.add_argument("--report", type=Path, help="write the markdown table here (and a PNG beside it)")
    args = parser.parse_args()
    if args.presets and "--preset" in args.common:
        parser.error("--presets and a --preset in --common both set the model size; give one of them")
    results = sweep(args)
    table = report(results)
    print(table)
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(table + "\n")
        plot(results, args.report.with_suffix(".png"), by_step=bool(args.steps))


if __name__ == "__main__":
    main()
