"""Mean ± standard deviation per side over several `bench_finetune.py --output` files (one per seed).

A single fine-tuning run moves by a point or more with the seed (head initialisation, dropout, batch order), so
"within ±0.5 point of transformers" is only meaningful between means. Each file holds one seed's run of one or
both sides; files whose arguments differ in anything but the seed are refused, so runs of different recipes are
never averaged together.

    python benchmarks/seed_summary.py runs/sst2_seed42.json runs/sst2_seed1.json runs/sst2_seed2.json
    python benchmarks/seed_summary.py --metric f1 runs/ner_seed*.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

SIDES = ("bertforge", "transformers")
IGNORED_ARGS = {"seed", "output", "skip", "transformers_first"}
# options added after some reports were written: absent means their default
LATER_ARGS = {"no_length_grouping": "False", "token_loss_constant": "False"}


def load_runs(paths: list[Path]) -> list[dict]:
    runs, recipe = [], None
    for path in paths:
        try:
            report = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise SystemExit(f"{path}: cannot read a bench_finetune.py report ({error}); pass the files written "
                             "by --output") from None
        args = {**LATER_ARGS, **report.get("args", {})}
        this_recipe = {k: v for k, v in args.items() if k not in IGNORED_ARGS}
        if recipe is None:
            recipe, first = this_recipe, path
        elif this_recipe != recipe:
            differ = sorted(k for k in recipe.keys() | this_recipe.keys() if recipe.get(k) != this_recipe.get(k))
            raise SystemExit(f"{path}: recipe differs from {first} in {', '.join(differ)}; only the seed may "
                             "differ between the files summarised together")
        runs.append({"path": path, "seed": report.get("args", {}).get("seed"), **report})
    return runs


def summarise(runs: list[dict], metric: str) -> dict:
    """Per side: the metric (in points) and training CPU seconds of every run, with their mean and std."""
    table = {}
    for side in SIDES:
        chosen = [r for r in runs if side in r]
        if not chosen:
            continue
        missing = [str(r["path"]) for r in chosen if metric not in r[side]["metrics"]]
        if missing:
            known = ", ".join(sorted(chosen[0][side]["metrics"]))
            raise SystemExit(f"{missing[0]}: no metric {metric!r} for {side}; choose one of: {known}")
        values = [100 * r[side]["metrics"][metric] for r in chosen]
        cpu = [r[side]["train_cpu_seconds"] for r in chosen]
        table[side] = {"seeds": [r["seed"] for r in chosen], "values": values, "mean": statistics.fmean(values),
                       "std": statistics.stdev(values) if len(values) > 1 else 0.0, "cpu_mean": statistics.fmean(cpu)}
    if len(table) == 2:
        ours, theirs = table["bertforge"], table["transformers"]
        table["difference"] = ours["mean"] - theirs["mean"]
        # standard error of the difference of two independent means
        table["difference_se"] = (ours["std"] ** 2 / len(ours["values"])
                                  + theirs["std"] ** 2 / len(theirs["values"])) ** 0.5
        table["cpu_ratio"] = theirs["cpu_mean"] / ours["cpu_mean"]
    return table


def render(table: dict, metric: str) -> str:
    lines = [f"| side | seeds | {metric} per seed | mean ± std | train CPU (mean) |", "|---|---|---|---|---|"]
    for side in SIDES:
        if side in table:
            row = table[side]
            lines.append(f"| {side} | {', '.join(map(str, row['seeds']))} | "
                         f"{' / '.join(f'{v:.2f}' for v in row['values'])} | {row['mean']:.2f} ± {row['std']:.2f} | "
                         f"{row['cpu_mean']:.1f} s |")
    if "difference" in table:
        lines.append("")
        lines.append(f"bertforge − transformers: {table['difference']:+.2f} points (standard error "
                     f"{table['difference_se']:.2f}); transformers uses {table['cpu_ratio']:.2f}x the CPU time")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("reports", nargs="+", type=Path, help="JSON files written by bench_finetune.py --output")
    parser.add_argument("--metric", default=None, help="accuracy (sst2), f1 (ner, squad), exact_match, ...")
    args = parser.parse_args(argv)
    runs = load_runs(args.reports)
    metric = args.metric or {"sst2": "accuracy"}.get(runs[0]["args"].get("task"), "f1")
    print(render(summarise(runs, metric), metric))


if __name__ == "__main__":
    sys.exit(main())
