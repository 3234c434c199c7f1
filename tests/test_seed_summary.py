"""benchmarks/seed_summary.py: means, spreads and the refusal to average different recipes."""

import importlib.util
import json
import statistics
from pathlib import Path

import pytest

SPEC = importlib.util.spec_from_file_location("seed_summary", Path(__file__).parents[1] / "benchmarks/seed_summary.py")
seed_summary = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(seed_summary)


def _report(path: Path, seed: int, ours: float | None, theirs: float | None, **args) -> Path:
    report = {"args": {"task": "sst2", "train_examples": "16000", "seed": str(seed), "output": str(path), **args}}
    if ours is not None:
        report["bertforge"] = {"metrics": {"accuracy": ours}, "train_cpu_seconds": 100.0}
    if theirs is not None:
        report["transformers"] = {"metrics": {"accuracy": theirs}, "train_cpu_seconds": 250.0}
    path.write_text(json.dumps(report))
    return path


def test_means_spreads_and_difference(tmp_path):
    paths = [_report(tmp_path / "a.json", 42, 0.86, 0.85), _report(tmp_path / "b.json", 1, 0.87, 0.86),
             # a report of one side only (e.g. --skip transformers) counts for that side alone
             _report(tmp_path / "c.json", 2, 0.88, None)]
    table = seed_summary.summarise(seed_summary.load_runs(paths), "accuracy")
    assert table["bertforge"]["values"] == pytest.approx([86.0, 87.0, 88.0])
    assert table["bertforge"]["std"] == pytest.approx(1.0)
    assert table["transformers"]["mean"] == pytest.approx(85.5)
    assert table["transformers"]["std"] == pytest.approx(statistics.stdev([85.0, 86.0]))
    assert table["difference"] == pytest.approx(1.5)
    assert table["difference_se"] == pytest.approx((1.0 / 3 + 0.5 / 2) ** 0.5)
    assert table["cpu_ratio"] == pytest.approx(2.5)
    text = seed_summary.render(table, "accuracy")
    assert "87.00 ± 1.00" in text and "+1.50 points" in text


def test_refuses_to_average_different_recipes(tmp_path):
    paths = [_report(tmp_path / "a.json", 42, 0.86, 0.85),
             _report(tmp_path / "b.json", 1, 0.87, 0.86, train_examples="4000")]
    with pytest.raises(SystemExit, match="b.json: recipe differs .* in train_examples"):
        seed_summary.load_runs(paths)


def test_options_added_later_count_as_what_was_run(tmp_path):
    ner = {"task": "ner"}
    old = _report(tmp_path / "old.json", 42, 0.86, 0.85, **ner)
    new = _report(tmp_path / "new.json", 1, 0.87, 0.86, no_length_grouping="False", token_loss="batch_mean", **ner)
    interim = _report(tmp_path / "interim.json", 2, 0.87, 0.86, token_loss_constant="False", **ner)
    assert len(seed_summary.load_runs([old, new, interim])) == 3
    grouped_off = _report(tmp_path / "off.json", 2, 0.87, None, no_length_grouping="True", token_loss="batch_mean",
                          **ner)
    with pytest.raises(SystemExit, match="in no_length_grouping;"):
        seed_summary.load_runs([old, grouped_off])
    constant = _report(tmp_path / "constant.json", 3, 0.88, None, token_loss="constant", **ner)
    interim_on = _report(tmp_path / "interim_on.json", 4, 0.88, None, token_loss_constant="True", **ner)
    assert len(seed_summary.load_runs([constant, interim_on])) == 2
    with pytest.raises(SystemExit, match="constant.json: recipe differs from .*old.json in token_loss"):
        seed_summary.load_runs([old, constant])


def test_token_loss_is_resolved_and_only_counts_for_ner(tmp_path):
    sst2_old = _report(tmp_path / "a.json", 42, 0.86, 0.85)
    sst2_new = _report(tmp_path / "b.json", 1, 0.87, 0.86, token_loss="auto")
    assert len(seed_summary.load_runs([sst2_old, sst2_new])) == 2
    ner = {"task": "ner"}
    auto = _report(tmp_path / "auto.json", 1, 0.8, None, token_loss="auto", **ner)
    interim_on = _report(tmp_path / "on.json", 2, 0.8, None, token_loss_constant="True", **ner)
    assert len(seed_summary.load_runs([auto, interim_on])) == 2
    auto_random = _report(tmp_path / "r.json", 3, 0.8, None, token_loss="auto", no_length_grouping="True", **ner)
    with pytest.raises(SystemExit, match="no_length_grouping, token_loss"):
        seed_summary.load_runs([auto, auto_random])


def test_bertforge_only_options_do_not_split_the_transformers_side(tmp_path):
    # transformers-only reports of one recipe pair up with bertforge-only reports of any bertforge setting
    theirs = _report(tmp_path / "theirs.json", 42, None, 0.85, token_loss="batch_mean", task="ner")
    ours = _report(tmp_path / "ours.json", 42, 0.86, None, token_loss="constant", task="ner")
    table = seed_summary.summarise(seed_summary.load_runs([theirs, ours]), "accuracy")
    assert table["difference"] == pytest.approx(1.0)
    with pytest.raises(SystemExit, match="train_examples"):
        seed_summary.load_runs([theirs, _report(tmp_path / "x.json", 1, 0.86, None, train_examples="8", task="ner")])
    # FILE:side keeps one side of a two-sided report
    both = _report(tmp_path / "both.json", 1, 0.80, 0.87, token_loss="batch_mean", task="ner")
    with pytest.raises(SystemExit, match="in token_loss"):
        seed_summary.load_runs([ours, both])
    table = seed_summary.summarise(seed_summary.load_runs([ours, Path(f"{both}:transformers")]), "accuracy")
    assert table["bertforge"]["values"] == pytest.approx([86.0])
    assert table["transformers"]["values"] == pytest.approx([87.0])
    with pytest.raises(SystemExit, match="name a side"):
        seed_summary.load_runs([Path(f"{both}:hf")])


def test_unknown_metric_names_the_choices(tmp_path):
    runs = seed_summary.load_runs([_report(tmp_path / "a.json", 42, 0.86, 0.85)])
    with pytest.raises(SystemExit, match="no metric 'f1' .* accuracy"):
        seed_summary.summarise(runs, "f1")
