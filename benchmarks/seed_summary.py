"""Mean ± standard deviation per side over several `bench_finetune.py --output` files (one per seed).

A single fine-tuning run moves by a point or more with the seed (head initialisation, dropout, batch order), so
"within ±0.5 point of transformers" is only meaningful between means. Each file holds one seed's run of one or
both sides; files whose arguments differ in anything but the seed are refused, so runs of different recipes are
never averaged together.

    python benchmarks/seed_summary.py runs/sst2_seed42.json runs/sst2_seed1.json runs/sst2_seed2.json
    python benchmarks/seed_summary.py --metric f1 runs/ner_seed*.json
    python benchmarks/seed_summary.py runs/ner_seed1.json:transformers runs/ner_ours_seed1.json   # one side of a file
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

SIDES = ("bertforge", "transformers")
IGNORED_ARGS = {"seed", "output", "skip", "transformers_first"}
OURS_ONLY_ARGS = {"no_length_grouping", "token_loss"}  # change the bertforge side only


def recipe(args: dict) -> dict:
    """The arguments that define a run, with options added after some reports were written at the value that
    reproduces what those reports ran (no `--no-length-grouping`; NER token loss: the batch mean before
    `--token-loss`, also when the interim `--token-loss-constant` flag was off), `--token-loss auto` resolved
    as bertforge resolves it, and the token loss dropped for tasks it does not apply to."""
    args = dict(args)
    args.setdefault("no_length_grouping", "False")
    args.setdefault("dropout", "0.1")
    args.setdefault("shared_head_init", "False")
    legacy = args.pop("token_loss_constant", None)
    args.setdefault("token_loss", "constant" if legacy == "True" else "batch_mean")
    if args["token_loss"] == "auto":  # what auto chose
        args["token_loss"] = "batch_mean" if args["no_length_grouping"] == "True" else "constant"
    if args.get("task") != "ner":  # the token loss exists for token classification only
        del args["token_loss"]
    return {k: v for k, v in args.items() if k not in IGNORED_ARGS}


def load_runs(paths: list[Path]) -> list[dict]:
    """The reports, refusing any pair whose recipes differ in more than the seed (for arguments that change
    the bertforge side only, among the reports that have a bertforge side)."""
    runs = []
    for path in paths:
        path, _, only = str(path).partition(":")
        path = Path(path)
        if only and only not in SIDES:
            raise SystemExit(f"{path}:{only}: after the colon name a side, bertforge or transformers")
        try:
            report = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise SystemExit(f"{path}: cannot read a bench_finetune.py report ({error}); pass the files written "
                             "by --output") from None
        for side in SIDES:
            if only and side != only:
                report.pop(side, None)
        runs.append({"path": path, "seed": report.get("args", {}).get("seed"), **report,
                     "recipe": recipe(report.get("args", {}))})
    for i, run in enumerate(runs):
        for earlier in runs[:i]:
            both_ours = "bertforge" in run and "bertforge" in earlier
            differ = sorted(k for k in run["recipe"].keys() | earlier["recipe"].keys()
                            if run["recipe"].get(k) != earlier["recipe"].get(k)
                            and (both_ours or k not in OURS_ONLY_ARGS))
            if differ:
                raise SystemExit(f"{run['path']}: recipe differs from {earlier['path']} in {', '.join(differ)}; "
                                 "only the seed may differ between the files summarised together")
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
        scale = 1 if chosen[0]["args"].get("task") == "squad" else 100  # SQuAD's official EM/F1 are in points
        values = [scale * r[side]["metrics"][metric] for r in chosen]
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
    parser.add_argument("reports", nargs="+", type=Path,
                        help="JSON files written by bench_finetune.py --output; FILE:bertforge or "
                             "FILE:transformers takes that side of the file only")
    parser.add_argument("--metric", default=None, help="accuracy (sst2), f1 (ner, squad), exact_match, ...")
    args = parser.parse_args(argv)
    runs = load_runs(args.reports)
    metric = args.metric or {"sst2": "accuracy"}.get(runs[0]["args"].get("task"), "f1")
    print(render(summarise(runs, metric), metric))


if __name__ == "__main__":
    sys.exit(main())
