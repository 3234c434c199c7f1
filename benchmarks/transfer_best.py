"""Each side at its best fine-tuning schedule: read the folders of several `benchmarks/transfer.py` runs of one
pre-trained model (e.g. one with `--epochs 2`, one with `--epochs 4`), and for every task and side pick the
schedule with the highest mean over seeds, as one tunes a fine-tuning on dev for each model.

A pre-trained model can need longer fine-tuning than an untrained one, which overfits sooner: comparing
both at one schedule puts one of them at a worse schedule than its own best. Every run keeps its best dev
epoch (transfer.py); here the schedules are compared by their means over the same seeds.

    python benchmarks/transfer_best.py runs/transfer_mlm_h2 runs/transfer_e10_mlm_h2 \\
        runs/transfer_sst2_all_mlm_h2 runs/transfer_sst2_all_e4_mlm_h2 \
        --floor-runs runs/transfer_sst2_all_e1_fast_p1 --report runs/best.md

The folders must share the floor's weights (the same untrained initialisation, checked by hash) and the
pre-trained model. Runs on a different number of training examples are different tasks, never mixed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
from collections import defaultdict
from pathlib import Path

from transfer import TASKS


def weights_hash(folder: Path) -> str:
    digest = hashlib.sha256()
    with (folder / "model.safetensors").open("rb") as weights:
        for block in iter(lambda: weights.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def runs(folder: Path, sides: str = "*"):
    """(task, side, setting, epochs, seed, metric) for every finished fine-tuning run under `folder` (of `sides`,
    a glob: "*" for both, "floor" for the floor's)."""
    for result in sorted(folder.glob(f"{sides}/*/seed*/result.json")):
        side, task = result.parts[-4], result.parts[-3]
        record = json.loads(result.read_text())
        config = json.loads((result.parent / "run" / "finetune_config.json").read_text())
        examples = config["max_train_examples"] or "all"
        setting = f"lr {config['learning_rate']:g}, batch {config['batch_size']}, dropout {config['dropout']:g}"
        metric = next(v for k, v in record.items() if k.endswith("/" + TASKS[task][4]))
        yield (task, examples), side, setting, config["epochs"], record["seed"], 100 * metric


def check_same_models(folders: list[Path], floor_folders: list[Path]) -> None:
    floors = {weights_hash(folder / "floor_model") for folder in folders + floor_folders}
    if len(floors) > 1:
        raise SystemExit("the folders' floor_model weights differ; give runs that share one untrained floor "
                         "(copy floor_model from the first run before fine-tuning)")
    models = {json.loads(r.read_text())["model"] for folder in folders
              for r in folder.glob("pretrained/*/seed*/result.json")}
    if len(models) > 1:
        raise SystemExit(f"the folders fine-tune different pre-trained models ({', '.join(sorted(models))}); "
                         "give the runs of one model")


def best_schedules(folders: list[Path], floor_folders: list[Path]) -> dict:
    """{(task, examples): {side: [(mean, std, epochs, setting, per-seed {seed: metric}), ...] best first}}."""
    scores = defaultdict(dict)
    every_run = [run for folder in folders for run in runs(folder)]
    every_run += [run for folder in floor_folders for run in runs(folder, "floor")]
    for task, side, setting, epochs, seed, metric in every_run:
        scores[task, side, setting, epochs][seed] = metric
    table = defaultdict(lambda: defaultdict(list))
    for (task, side, setting, epochs), per_seed in scores.items():
        values = list(per_seed.values())
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        table[task][side].append((statistics.mean(values), std, epochs, setting, per_seed))
    for sides in table.values():
        for schedules in sides.values():
            schedules.sort(key=lambda row: row[0], reverse=True)
    return table


def report(table: dict) -> str:
    settings = {row[3] for sides in table.values() for rows in sides.values() for row in rows}

    def schedule(epochs: float, setting: str) -> str:  # the setting is named only where it varies
        return f"{epochs:g} epoch{'' if epochs == 1 else 's'}" + (f", {setting}" if len(settings) > 1 else "")

    def mean_at(rows: list, key: tuple) -> str:
        return next((f"{mean:.2f}" for mean, _, epochs, setting, _ in rows if (epochs, setting) == key), "–")

    lines = ["| task (metric, dev) | training examples | pre-trained at its best | floor at its best | gap | "
             "every schedule: pre-trained / floor mean |", "|---|---|---|---|---|---|"]
    for (task, examples), sides in sorted(table.items(), key=lambda item: str(item[0])):
        if not sides.get("pretrained") or not sides.get("floor"):
            continue
        cells = {side: f"{mean:.2f} ± {std:.2f} ({schedule(epochs, setting)}, {len(seeds)} seeds)"
                 for side, (mean, std, epochs, setting, seeds) in ((s, sides[s][0]) for s in ("pretrained", "floor"))}
        keys = sorted({(row[2], row[3]) for rows in sides.values() for row in rows})
        tried = "; ".join(f"{schedule(*key)}: {mean_at(sides['pretrained'], key)} / {mean_at(sides['floor'], key)}"
                          for key in keys)
        gap = sides["pretrained"][0][0] - sides["floor"][0][0]
        count = examples if examples == "all" else f"{examples:,}"
        lines.append(f"| {task} ({TASKS[task][4]}) | {count} | {cells['pretrained']} | {cells['floor']} | "
                     f"{gap:+.2f} | {tried} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", type=Path, help="output folders of benchmarks/transfer.py")
    parser.add_argument("--floor-runs", nargs="+", type=Path, default=[], metavar="FOLDER",
                        help="more transfer.py folders whose floor runs only are read (e.g. the floor's other "
                        "schedules, fine-tuned beside another pre-trained model)")
    parser.add_argument("--report", type=Path, help="write the markdown table here")
    args = parser.parse_args()
    for folder in args.folders + args.floor_runs:
        if not (folder / "floor_model" / "model.safetensors").is_file():
            parser.error(f"{folder}: no floor_model/model.safetensors; give an output folder of transfer.py")
    check_same_models(args.folders, args.floor_runs)
    table = best_schedules(args.folders, args.floor_runs)
    if not any(sides.get("pretrained") and sides.get("floor") for sides in table.values()):
        parser.error("no task has finished runs of both sides in these folders; give the output folders of "
                     "finished transfer.py runs")
    text = report(table)
    print(text)
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(text + "\n")


if __name__ == "__main__":
    main()
