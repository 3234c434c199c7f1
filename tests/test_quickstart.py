"""`bertforge quickstart` end to end at its tiny size: built-in corpus -> vocab -> shards -> training -> report."""

from __future__ import annotations

import json

import pytest
import torch

from bertforge.checkpoint import load_model
from bertforge.heads import BertForMaskedLM
from bertforge.quickstart import _paragraphs, builtin_documents, run


def test_builtin_corpus_is_prose_from_python_itself():
    documents = builtin_documents(max_modules=5)
    from pydoc_data.topics import topics

    assert len(documents) >= len(topics) + 3
    text = " ".join(p for doc in documents for p in doc)
    assert "The \"for\" statement is used to iterate over the elements of a sequence" in text
    assert "for_stmt ::=" not in text  # grammar lines are dropped
    text = "Title\n*****\n\nOne line\nwrapped here.\n\n   code = 1\n"
    assert _paragraphs(text) == ["Title", "One line wrapped here."]


def test_quickstart_tiny_trains_and_reports(tmp_path):
    report = run(output_dir=tmp_path, size="tiny", steps=40, max_minutes=5, threads=1)
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["heldout"] == report["heldout"]
    before, after = report["heldout"]["untrained"], report["heldout"]["trained"]
    assert report["steps"] == 40 and report["vocab_size"] == 1000
    # Seconds of training beat random weights at predicting masked tokens (the frequent ones first).
    assert after["mlm_accuracy"] > before["mlm_accuracy"] + 0.01
    assert after["mlm_loss"] < before["mlm_loss"] - 0.4
    assert (tmp_path / "run" / "curves.png").stat().st_size > 10_000
    assert len(report["fill_mask"]) == 5 and all(len(r["trained"]) == 5 for r in report["fill_mask"])
    assert 0 <= after["mlm_mask_accuracy"] <= 1  # the honest figure: only where the input shows [MASK]
    model = load_model(tmp_path / "run" / "model", BertForMaskedLM)  # the budget recipe: MLM only
    assert model.config.hidden_size == 64 and model.nsp is None
    assert torch.isfinite(model.mlm.bias).all()


def test_quickstart_reads_a_folder_and_refuses_too_little_text_in_one_line(tmp_path, capsys):
    """--files takes folders (their .txt files, as `prepare` does); a corpus too small to hold any text out for
    the held-out accuracy is refused before training, naming the files, instead of failing after it."""
    from bertforge.cli import main

    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "note.txt").write_text("One short paragraph of text.\n", encoding="utf-8")
    with pytest.raises(SystemExit) as exit_info:
        main(["quickstart", "--files", str(folder), "--output-dir", str(tmp_path / "out"), "--size", "tiny",
              "--max-minutes", "0.2"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(folder / "note.txt") in err and "too little text" in err
    assert not (tmp_path / "out" / "run").exists()  # nothing trained
    (folder / "note.txt").unlink()
    with pytest.raises(SystemExit):
        main(["quickstart", "--files", str(folder), "--output-dir", str(tmp_path / "out")])
    assert "holds no .txt or .gz files" in capsys.readouterr().err


def test_a_quickstart_rerun_replaces_the_last_run_only_once_it_has_finished(tmp_path, monkeypatch):
    """An interrupted rerun in the same folder leaves the earlier run's model as it was; a finished one replaces
    it, leaving no temporary folder behind and a settings record that names the folder it ends in."""
    from bertforge import quickstart

    run(output_dir=tmp_path, size="tiny", steps=3, max_minutes=5, threads=1)
    weights = tmp_path / "run" / "model" / "model.safetensors"
    earlier = weights.read_bytes()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # Ctrl-C after training, before the rerun is in place

    monkeypatch.setattr(quickstart, "compare_fill_mask", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run(output_dir=tmp_path, size="tiny", steps=3, max_minutes=5, threads=1, seed=1)
    assert weights.read_bytes() == earlier
    leftovers = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".run."))
    assert len(leftovers) == 1  # the interrupted rerun's folder: a temporary, removed once stale
    monkeypatch.undo()

    report = run(output_dir=tmp_path, size="tiny", steps=3, max_minutes=5, threads=1, seed=1)
    assert weights.read_bytes() != earlier and report["checkpoint"] == str(tmp_path / "run" / "model")
    assert json.loads((tmp_path / "run" / "config.json").read_text())["output_dir"] == str(tmp_path / "run")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".run.")) == leftovers  # nothing new


def test_a_file_where_the_run_folder_goes_is_refused_before_any_work(tmp_path):
    from bertforge.errors import OutputError

    (tmp_path / "run").write_text("not a folder")
    with pytest.raises(OutputError, match=r"the run folder of --output-dir, .*run: is a file, not a folder"):
        run(output_dir=tmp_path, size="tiny", steps=1, threads=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no corpus, no vocabulary, no training
    assert (tmp_path / "run").read_text() == "not a folder"
