"""A hostile user at the command line: every case runs the real CLI and checks the exit status, that
stderr is exactly one line (never a traceback), and that the files which existed before are unchanged.

Models and corpora are tiny (a word-level vocabulary, 2 layers of width 32), built once per module.
"""

from __future__ import annotations

import csv
import errno
import gzip
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import save_tiny_encoder

from bertforge.cli import main
from bertforge.heads import BertForMaskedLM
from bertforge.tokenizer import BertTokenizer

ROOT = Path(__file__).resolve().parents[1]
WORDS = ["good", "bad", "movie", "plot", "the", "was", "very", "film", "actor", "story", "a", "is", "it", "of",
         "and", "to", "in", "this", "that", "with", "for", "on", "."]
TINY = '{"hidden_size": 32, "num_layers": 2, "num_heads": 4, "intermediate_size": 37}'
PRETRAIN = ["--preset", "tiny", "--model_overrides", TINY, "--max_seq_length", "32", "--batch_size", "4",
            "--steps", "2", "--warmup_steps", "1", "--eval_every", "2", "--eval_batches", "1", "--log_every", "1",
            "--save_every", "1", "--progress", "false", "--tensorboard", "false"]


# ----- helpers -------------------------------------------------------------------------------------
def cli(capsys, *args: str) -> tuple[int, str, str]:
    """Run `bertforge ARGS` in this process: (exit status, stdout, stderr)."""
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def refused(capsys, *args: str, status: int = 2) -> str:
    """Run the CLI, expect it to refuse with one line on stderr; return that line."""
    code, _, err = cli(capsys, *args)
    lines = err.splitlines()
    assert code == status, err
    assert len(lines) == 1 and lines[0].startswith("bertforge: error: "), err
    assert "Traceback" not in err
    return lines[0]


def snapshot(*roots: Path) -> dict[str, str]:
    """sha256 of every file under `roots` (a file root counts as itself)."""
    digests = {}
    for root in roots:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for path in files:
            digests[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digests


def temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*.tmp"))


def write_csv(path: Path, rows: list[dict], columns: list[str] | None = None) -> Path:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns or list(rows[0]), delimiter="\t" if path.suffix == ".tsv"
                                else ",")
        writer.writeheader()
        writer.writerows(rows)
    return path


def sentiment_rows(n: int) -> list[dict]:
    rng = np.random.default_rng(n)
    rows = []
    for i in range(n):
        label = "pos" if i % 2 else "neg"
        words = list(rng.choice(WORDS[2:10], size=4)) + ["good" if label == "pos" else "bad"]
        rows.append({"id": str(i), "text": " ".join(words), "label": label})
    return rows


# ----- fixtures ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("hostile")


@pytest.fixture(scope="module")
def encoder(work) -> Path:
    """A random 2-layer BertModel (no MLM head) with a word-level vocabulary, saved in HF format."""
    return save_tiny_encoder(work / "encoder", WORDS)


@pytest.fixture(scope="module")
def classifier(work, encoder) -> Path:
    """A model fine-tuned (one short epoch) by `bertforge finetune`, for predict and evaluate."""
    from bertforge.cli import call_job
    from bertforge.training import finetune

    train = write_csv(work / "train.csv", sentiment_rows(16))
    call_job(finetune.run, {"output_dir": work / "classifier", "model": str(encoder), "train": train, "epochs": 1,
                            "batch_size": 8, "max_length": 16, "progress": False, "tensorboard": False})
    return work / "classifier"


@pytest.fixture(scope="module")
def corpus_text(work) -> Path:
    from pydoc_data.topics import topics

    docs = [topics[key] for key in sorted(topics)[:12]]
    path = work / "docs.txt"
    path.write_text("\n\n".join("\n".join(line for line in doc.splitlines() if line.strip()) for doc in docs),
                    encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def vocab_dir(work, corpus_text) -> Path:
    tokenizer = BertTokenizer.train([corpus_text], vocab_size=300)
    tokenizer.save_pretrained(work / "vocab")
    return work / "vocab"


@pytest.fixture(scope="module")
def corpus(work, corpus_text, vocab_dir) -> Path:
    from bertforge.data.shards import prepare_corpus

    prepare_corpus([corpus_text], work / "corpus", BertTokenizer.from_pretrained(vocab_dir), heldout_every=4,
                   progress=False)
    return work / "corpus"


@pytest.fixture(scope="module")
def finished_run(work, corpus) -> Path:
    """A finished 2-step pre-training run (checkpoints of steps 1 and 2, model/, metrics.jsonl)."""
    main(["pretrain", "--data", str(corpus), "--output_dir", str(work / "run"), *PRETRAIN])
    assert (work / "run" / "model" / "model.safetensors").is_file()
    return work / "run"


def copy_of(folder: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(folder, tmp_path / folder.name))


# ----- data loss -----------------------------------------------------------------------------------
def test_embed_and_predict_refuse_to_write_over_their_input(capsys, tmp_path, encoder, classifier):
    texts = tmp_path / "texts.txt"
    texts.write_text("a good movie\nthe plot was bad\n", encoding="utf-8")
    table = write_csv(tmp_path / "new.csv", sentiment_rows(4))
    before = snapshot(texts, table)
    line = refused(capsys, "embed", "--model", encoder, "--input", texts, "--output", texts)
    assert line.endswith("is the input file; writing there would destroy it — choose another output path")
    # Another spelling of the same file is the same file.
    refused(capsys, "embed", "--model", encoder, "--input", texts, "--output", tmp_path / "sub" / ".." / "texts.txt")
    os.symlink(table, tmp_path / "link.csv")
    line = refused(capsys, "predict", "--model", classifier, "--input", table, "--output", tmp_path / "link.csv")
    assert "--output " in line and "is the input file" in line
    assert snapshot(texts, table) == before


def test_prepare_with_a_damaged_input_leaves_the_earlier_corpus_intact(capsys, tmp_path, corpus, corpus_text,
                                                                       vocab_dir):
    existing = copy_of(corpus, tmp_path)
    before = snapshot(existing)
    truncated = tmp_path / "cut.txt.gz"
    truncated.write_bytes(gzip.compress(corpus_text.read_bytes())[:-200])  # the download was cut short
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("Caf\xe9 society.\nIt was a place.\n".encode("latin-1"))
    not_gzip = tmp_path / "plain.gz"
    not_gzip.write_text("plain text with a .gz name\n", encoding="utf-8")
    prepare = ["prepare", "--vocab", vocab_dir, "--output_dir", existing, "--progress", "false", "--files"]

    line = refused(capsys, *prepare, json.dumps([str(corpus_text), str(truncated)]))
    assert line.endswith(f"{truncated}: the gzip file is truncated (it ends after line "
                         f"{line.split('after line ')[1].split(')')[0]}); copy or download it again")
    line = refused(capsys, *prepare, json.dumps([str(latin1)]))
    assert f"{latin1}:1: byte 3 (0xe9) is not UTF-8" in line
    line = refused(capsys, *prepare, json.dumps([str(not_gzip)]))
    assert "not a gzip file" in line
    assert snapshot(existing) == before
    assert temporaries(tmp_path) == []  # the half-built corpus went away with the error


def test_prepare_replaces_only_its_own_files(capsys, tmp_path, corpus_text, vocab_dir):
    out = tmp_path / "corpus"
    out.mkdir()
    (out / "notes.md").write_text("mine", encoding="utf-8")
    prepare = ["prepare", "--vocab", vocab_dir, "--output_dir", out, "--progress", "false", "--files"]
    code, _, err = cli(capsys, *prepare, json.dumps([str(corpus_text)]), "--heldout_every", "4")
    assert code == 0, err
    first = json.loads((out / "meta.json").read_text())["counts"]
    code, _, err = cli(capsys, *prepare, json.dumps([str(corpus_text)]), "--heldout_every", "0")
    assert code == 0, err
    meta = json.loads((out / "meta.json").read_text())
    assert meta["counts"]["heldout"]["documents"] == 0 < first["heldout"]["documents"]
    # No held-out split any more: the old one went with the old corpus; the user's own file stayed.
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "notes.md", "tokenizer", "train"]
    assert (out / "notes.md").read_text() == "mine" and temporaries(tmp_path) == []


def test_pretrain_rerun_into_a_finished_run_needs_resume_or_overwrite(capsys, tmp_path, corpus, finished_run):
    run = copy_of(finished_run, tmp_path)
    before = snapshot(run)
    line = refused(capsys, "pretrain", "--data", corpus, "--output_dir", run, *PRETRAIN)
    assert line == (f"bertforge: error: --output-dir {run}: already holds checkpoints, config.json, curves.png, "
                    "metrics.jsonl, ...; pass --resume to continue that run, --overwrite to replace it, or choose a "
                    "new folder")
    assert snapshot(run) == before
    refused(capsys, "pretrain", "--data", corpus, "--output_dir", run, "--resume", "true", "--overwrite", "true",
            *PRETRAIN)
    # --overwrite would delete the weights a second phase starts from: refused.
    line = refused(capsys, "pretrain", "--data", corpus, "--init_from", run, "--output_dir", run, "--overwrite",
                   "true", *PRETRAIN)
    assert line == (f"bertforge: error: --overwrite {run}: would delete the input {run}; move it out of the way or "
                    "choose another output folder")
    assert snapshot(run) == before
    # A corpus kept inside the run folder is not pretrain's to delete: it survives --overwrite.
    inside = copy_of(corpus, run)
    kept = snapshot(inside)
    code, _, err = cli(capsys, "pretrain", "--data", inside, "--output_dir", run, "--overwrite", "true", *PRETRAIN)
    assert code == 0, err
    assert snapshot(inside) == kept


def test_pretrain_overwrite_replaces_the_run_and_resume_continues_it(capsys, tmp_path, corpus, finished_run):
    from bertforge.training.checkpointing import latest_checkpoint

    run = copy_of(finished_run, tmp_path)
    (run / "checkpoints" / "step-0009999.pt").write_bytes((run / "checkpoints" / "step-0000002.pt").read_bytes())
    code, _, err = cli(capsys, "pretrain", "--data", corpus, "--output_dir", run, "--overwrite", "true", *PRETRAIN)
    assert code == 0, err
    assert [p.name for p in sorted((run / "checkpoints").glob("*.pt"))] == ["step-0000001.pt", "step-0000002.pt"]
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and steps.count(2) >= 1  # one run's metrics, not two appended
    code, _, err = cli(capsys, "pretrain", "--data", corpus, "--output_dir", run, "--resume", "true", *PRETRAIN,
                       "--steps", "3")  # the last value of an option wins
    assert code == 0, err
    assert latest_checkpoint(run / "checkpoints").name == "step-0000003.pt"


def test_resume_from_a_truncated_latest_checkpoint_falls_back_in_one_line(capsys, caplog, tmp_path, corpus,
                                                                          finished_run):
    run = copy_of(finished_run, tmp_path)
    latest = run / "checkpoints" / "step-0000002.pt"
    latest.write_bytes(latest.read_bytes()[: latest.stat().st_size // 2])
    with caplog.at_level("WARNING"):
        code, out, err = cli(capsys, "pretrain", "--data", corpus, "--output_dir", run, "--resume", "true",
                             *PRETRAIN)
    assert code == 0, err
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == [f"{latest} is truncated or corrupt; resuming from step-0000001.pt instead"]
    assert "resumed from" in out and "step-0000001.pt" in out
    from bertforge.training.checkpointing import load_checkpoint

    assert load_checkpoint(run)["step"] == 2  # step 2 was redone and saved whole


def test_finetune_into_a_used_folder_needs_overwrite_and_a_killed_run_changes_nothing(capsys, tmp_path, encoder,
                                                                                       classifier, monkeypatch):
    out = copy_of(classifier, tmp_path)
    before = snapshot(out)
    train = write_csv(tmp_path / "train.csv", sentiment_rows(8))
    args = ["finetune", "--model", encoder, "--train", train, "--output_dir", out, "--epochs", "1",
            "--batch_size", "4", "--max_seq_length", "16", "--progress", "false", "--tensorboard", "false"]
    line = refused(capsys, *args)
    assert line.endswith("already holds best_metrics.json, config.json, curves.png, finetune_config.json, ...; "
                         "pass --overwrite to replace it, or choose a new folder")  # finetune has no --resume

    from bertforge.training import finetune

    def killed(*_, **__):
        raise KeyboardInterrupt  # the user pressed Ctrl-C in the middle of the first epoch

    monkeypatch.setattr(finetune, "train_loop", killed)
    assert refused(capsys, *args, "--overwrite", "true", status=130).startswith("bertforge: error: interrupted")
    assert snapshot(out) == before and temporaries(tmp_path) == []
    monkeypatch.undo()

    code, _, err = cli(capsys, *args, "--overwrite", "true")
    assert code == 0, err
    assert json.loads((out / "finetune_config.json").read_text())["train"] == str(train)
    assert temporaries(tmp_path) == []


# ----- limits and options --------------------------------------------------------------------------
def test_a_sequence_longer_than_the_position_table_is_refused_before_any_compute(capsys, tmp_path, corpus):
    out = tmp_path / "long"
    line = refused(capsys, "pretrain", "--data", corpus, "--output_dir", out, *PRETRAIN, "--max_seq_length", "100000")
    assert line.startswith("bertforge: error: --max-length 100000: longer than the model's 512 positions")
    assert not out.exists()


@pytest.mark.parametrize(("option", "value", "message"), [
    ("--batch_size", "0", "--batch-size 0: must be a whole number of at least 1"),
    ("--steps", "-1", "--steps -1: must be a whole number of at least 1"),
    ("--save_every", "0", "--save-every 0: must be a whole number of at least 1"),
    ("--masking_rate", "2", "--masking-rate 2.0: must be 0 < value <= 1 (the share of tokens to predict, e.g. 0.15)"),
    ("--pair_phase", "1", "--pair-phase 1.0: must be 0 <= value < 1 (the second phase's share of the run, e.g. 0.4)"),
])
def test_pretrain_options_out_of_range(capsys, tmp_path, corpus, option, value, message):
    line = refused(capsys, "pretrain", "--data", corpus, "--output_dir", tmp_path / "r", *PRETRAIN, option, value)
    assert line == f"bertforge: error: {message}"
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(("option", "value", "message"), [
    ("--epochs", "-1", "--epochs -1.0: must be a positive number (passes over the training data)"),
    ("--batch_size", "-8", "--batch-size -8: must be a whole number of at least 1"),
    ("--dropout", "1.5", "--dropout 1.5: must be 0 <= value < 1 (a probability, e.g. 0.1)"),
])
def test_finetune_options_out_of_range(capsys, tmp_path, encoder, option, value, message):
    train = write_csv(tmp_path / "train.csv", sentiment_rows(8))
    line = refused(capsys, "finetune", "--model", encoder, "--train", train, "--output_dir", tmp_path / "out",
                   option, value)
    assert line == f"bertforge: error: {message}"
    assert not (tmp_path / "out").exists()


def test_finetune_and_predict_lengths_beyond_the_position_table(capsys, tmp_path, encoder, classifier):
    train = write_csv(tmp_path / "train.csv", sentiment_rows(8))
    line = refused(capsys, "finetune", "--model", encoder, "--train", train, "--output_dir", tmp_path / "out",
                   "--max_seq_length", "100000")
    assert line == (f"bertforge: error: --max-length 100000: longer than the 64 positions of {encoder} "
                    "(max_position_embeddings); use at most 64")
    rows = write_csv(tmp_path / "rows.csv", [{"text": "good movie"}])
    line = refused(capsys, "predict", "--model", classifier, "--input", rows, "--output", tmp_path / "p.csv",
                   "--max_seq_length", "65")
    assert "--max-length 65: longer than the 64 positions" in line
    assert not (tmp_path / "out").exists() and not (tmp_path / "p.csv").exists()


def test_embed_bad_layers_device_and_batch_size(capsys, tmp_path, encoder):
    texts = tmp_path / "t.txt"
    texts.write_text("good movie\n", encoding="utf-8")
    base = ["embed", "--model", encoder, "--input", texts, "--output", tmp_path / "v.npy"]
    line = refused(capsys, *base, "--layers", "[99]")
    assert line.endswith("--layers [99]: out of range; this model has hidden states 0..2 (or -1..-3)")
    assert refused(capsys, *base, "--batch_size", "0").endswith("--batch-size 0: must be a whole number of at least 1")
    if not torch.cuda.is_available():
        assert refused(capsys, *base, "--device", "cuda").endswith(
            "--device cuda: no CUDA GPU is available here; use --device cpu")
    assert refused(capsys, *base, "--device", "tpu9").endswith("--device tpu9: not a device; use cpu, cuda, cuda:N "
                                                               "or auto")
    assert not (tmp_path / "v.npy").exists()


def test_a_bad_command_line_is_one_line_too(capsys, tmp_path, encoder):
    texts = tmp_path / "t.txt"
    texts.write_text("good movie\n", encoding="utf-8")
    line = refused(capsys, "embed", "--model", encoder, "--input", texts, "--batch_size", "many")
    assert "batch_size" in line and line.endswith("(`bertforge embed --help` lists what is accepted)")
    line = refused(capsys, "embed", "--model", encoder, "--input", texts, "--colour", "red")
    assert "--colour" in line
    code, out, _ = cli(capsys, "embed", "--help")
    assert code == 0 and "--batch-size" in out and "--batch_size" not in out


def test_out_of_memory_is_one_line(capsys, tmp_path, encoder, monkeypatch):
    texts = tmp_path / "t.txt"
    texts.write_text("good movie\n", encoding="utf-8")
    from bertforge.inference import embed

    def exhausted(*_, **__):
        raise MemoryError

    monkeypatch.setattr(embed, "embed_texts", exhausted)
    line = refused(capsys, "embed", "--model", encoder, "--input", texts, "--output", tmp_path / "v.npy", status=1)
    assert line == ("bertforge: error: out of memory; lower --batch-size (or the sequence length), or use a smaller "
                    "model")


# ----- paths ---------------------------------------------------------------------------------------
def test_output_paths_that_cannot_be_written_are_refused_before_compute(capsys, tmp_path, encoder, corpus):
    texts = tmp_path / "t.txt"
    texts.write_text("good movie\n", encoding="utf-8")
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder", encoding="utf-8")
    base = ["embed", "--model", encoder, "--input", texts]
    line = refused(capsys, *base, "--output", blocker / "sub" / "v.npy")
    assert line.endswith(f"{blocker} is a file, so no folder can be made there; choose another path")
    line = refused(capsys, *base, "--output", tmp_path)
    assert line.endswith(f"--output {tmp_path}: is a folder; give a file path, e.g. {tmp_path / 'out'}")
    line = refused(capsys, "pretrain", "--data", corpus, "--output_dir", blocker, *PRETRAIN)
    assert line.endswith(f"--output-dir {blocker}: is a file, not a folder; choose another path")
    assert blocker.read_text() == "a file, not a folder"


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root may write anywhere")
def test_an_unwritable_folder_is_refused(capsys, tmp_path, encoder):
    texts = tmp_path / "t.txt"
    texts.write_text("good movie\n", encoding="utf-8")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    line = refused(capsys, "embed", "--model", encoder, "--input", texts, "--output", locked / "v.npy")
    assert "permission denied" in line


def test_a_full_disk_is_one_line(capsys, tmp_path, encoder, monkeypatch):
    texts = tmp_path / "t.txt"
    texts.write_text("good movie\n", encoding="utf-8")
    from bertforge.inference import embed

    def full(path, write):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(embed, "write_atomic", full)
    code, _, err = cli(capsys, "embed", "--model", encoder, "--input", texts, "--output", tmp_path / "v.npy")
    assert code == 1 and "Traceback" not in err
    line = err.splitlines()[-1]  # after the progress bar of the computation that ran before the write
    assert line == (f"bertforge: error: {tmp_path / 'v.npy'}: the disk is full; free some space and run again "
                    "(finished files were left intact)")


def test_missing_empty_and_folder_inputs(capsys, tmp_path, vocab_dir, encoder):
    empty = tmp_path / "empty.txt"
    empty.write_text("", encoding="utf-8")
    (tmp_path / "nothing").mkdir()
    prepare = ["prepare", "--vocab", vocab_dir, "--output_dir", tmp_path / "c", "--progress", "false", "--files"]
    assert refused(capsys, *prepare, json.dumps([str(tmp_path / "gone.txt")])).endswith(
        f"{tmp_path / 'gone.txt'}: no such file or folder")
    assert refused(capsys, *prepare, json.dumps([str(empty)])).endswith(f"{empty}: the corpus file is empty")
    assert refused(capsys, *prepare, json.dumps([str(tmp_path / "nothing")])).endswith(
        "the folder holds no .txt or .gz files")
    line = refused(capsys, "embed", "--model", encoder, "--input", tmp_path / "nothing", "--output", tmp_path / "v.npy")
    assert line.endswith(f"{tmp_path / 'nothing'}: is a folder; give a file")
    assert not (tmp_path / "c").exists()


def test_a_path_with_one_slash_is_local_not_the_hub(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    (tmp_path / "t.txt").write_text("good\n", encoding="utf-8")
    line = refused(capsys, "embed", "--model", "runs/modle", "--input", "t.txt", "--output", "v.npy")
    assert line == "bertforge: error: runs/modle: no such folder (a model folder holds config.json and the weights)"
    line = refused(capsys, "embed", "--model", "t.txt", "--input", "t.txt", "--output", "v.npy")
    assert line.endswith("t.txt: is a file; give the model's folder (the one holding config.json)")


# ----- tables --------------------------------------------------------------------------------------
def test_header_only_tables_in_predict_and_evaluate(capsys, tmp_path, classifier):
    header = tmp_path / "header.tsv"
    header.write_text("id\ttext\tlabel\n", encoding="utf-8")
    line = refused(capsys, "predict", "--model", classifier, "--input", header, "--output", tmp_path / "p.csv")
    assert line.endswith(f"{header}: no examples to predict (only a header line?)")
    line = refused(capsys, "evaluate", "--model", classifier, "--data", header)
    assert line.endswith(f"{header}: no examples to evaluate (only a header line?)")
    assert not (tmp_path / "p.csv").exists()


def test_missing_columns_name_the_option_that_chose_them(capsys, tmp_path, classifier, encoder):
    rows = write_csv(tmp_path / "rows.csv", [{"text": "good movie", "target": "pos"}] * 4)
    line = refused(capsys, "predict", "--model", classifier, "--input", rows, "--id_column", "id", "--output",
                   tmp_path / "p.csv")
    assert line.endswith("no column 'id'; the columns are ['text', 'target'] (choose one with --id-column)")
    line = refused(capsys, "finetune", "--model", encoder, "--train", rows, "--output_dir", tmp_path / "o",
                   "--max_seq_length", "16")
    assert line.endswith("no column 'label'; the columns are ['text', 'target'] (choose one with --label-column)")


def test_long_csv_fields_are_read_and_a_runaway_quote_is_named(capsys, tmp_path, encoder):
    long_text = "good movie " * 20_000  # 220 KB in one field: over Python's default 128 KiB limit
    table = write_csv(tmp_path / "long.csv", [{"text": long_text}, {"text": "bad"}])
    code, _, err = cli(capsys, "embed", "--model", encoder, "--input", table, "--text_column", "text", "--output",
                       tmp_path / "v.npy")
    assert code == 0, err
    assert np.load(tmp_path / "v.npy").shape == (2, 32)
    limit = csv.field_size_limit()
    try:
        csv.field_size_limit(1000)
        broken = tmp_path / "quote.csv"
        broken.write_text('text\n"good movie\n' + "bad plot\n" * 200, encoding="utf-8")
        line = refused(capsys, "embed", "--model", encoder, "--input", broken, "--text_column", "text", "--output",
                       tmp_path / "w.npy")
    finally:
        csv.field_size_limit(limit)
    assert "a field longer than 1,000 characters; probably a quote" in line


def test_non_utf8_input_names_the_file_line_and_byte(capsys, tmp_path, encoder):
    texts = tmp_path / "t.txt"
    texts.write_bytes(b"good movie\nbad \xff plot\n")
    line = refused(capsys, "embed", "--model", encoder, "--input", texts, "--output", tmp_path / "v.npy")
    assert line == (f"bertforge: error: {texts}:2: byte 15 (0xff) is not UTF-8; convert the file to UTF-8 "
                    "(e.g. `iconv -f latin1 -t utf-8`)")


# ----- models --------------------------------------------------------------------------------------
def test_fill_mask_on_a_model_without_an_mlm_head(capsys, encoder):
    line = refused(capsys, "fill-mask", "--model", encoder, "--text", "a [MASK] movie")
    assert line.endswith("this model is a BertModel, without the head fill-mask needs; give a BertForPreTraining "
                         "or BertForMaskedLM checkpoint")


def test_predict_on_a_model_not_saved_by_finetune_does_not_offer_a_missing_option(capsys, tmp_path, encoder):
    rows = write_csv(tmp_path / "rows.csv", [{"text": "good movie"}])
    line = refused(capsys, "predict", "--model", encoder, "--input", rows, "--output", tmp_path / "p.csv")
    assert "--task to say" not in line and "fine-tune it first (bertforge finetune" in line


def test_a_vocabulary_shorter_than_the_embeddings_is_refused(capsys, tmp_path):
    from bertforge.inference.tiny import build

    build(BertForMaskedLM, tmp_path / "mlm")
    vocab = tmp_path / "mlm" / "vocab.txt"
    vocab.write_text("".join(vocab.read_text(encoding="utf-8").splitlines(keepends=True)[:-20]), encoding="utf-8")
    line = refused(capsys, "fill-mask", "--model", tmp_path / "mlm", "--text", "a [MASK] movie")
    assert "tokens, fewer than the" in line and "the vocabulary does not belong to these weights" in line


# ----- clean-up ------------------------------------------------------------------------------------
def test_stale_temporaries_are_removed_when_a_run_starts(capsys, tmp_path, corpus, finished_run):
    run = copy_of(finished_run, tmp_path)
    stale = run / "checkpoints" / ".step-0000003.pt.abcd1234.tmp"  # a save killed long ago
    fresh = run / "checkpoints" / ".step-0000003.pt.efgh5678.tmp"  # maybe still being written
    stale_dir = tmp_path / ".run.ijkl9012.tmp"
    for path in (stale, fresh):
        path.write_bytes(b"partial")
    stale_dir.mkdir()
    hour_ago = time.time() - 3600
    os.utime(stale, (hour_ago, hour_ago))
    code, _, err = cli(capsys, "pretrain", "--data", corpus, "--output_dir", run, "--resume", "true", *PRETRAIN)
    assert code == 0, err
    assert not stale.exists() and fresh.exists()
    from bertforge.files import remove_stale_temporaries

    os.utime(stale_dir, (hour_ago, hour_ago))
    assert remove_stale_temporaries(tmp_path, name="run") == [stale_dir]


# ----- the real process ----------------------------------------------------------------------------
def test_the_real_command_prints_one_line_and_exits_2(tmp_path, encoder):
    texts = tmp_path / "t.txt"
    texts.write_text("good movie\n", encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    for args in (["embed", "--model", str(encoder), "--input", str(texts), "--output", str(texts)],
                 ["prepare", "--files", json.dumps([str(tmp_path / "gone.txt")]), "--output-dir", str(tmp_path / "c"),
                  "--vocab", str(encoder)],
                 ["fill-mask", "--model", str(encoder), "--text", "a [MASK]"]):
        done = subprocess.run([sys.executable, "-m", "bertforge", *args], capture_output=True, text=True, env=env,
                              timeout=300)
        assert done.returncode == 2, done.stderr
        assert len(done.stderr.splitlines()) == 1 and done.stderr.startswith("bertforge: error: "), done.stderr
    assert texts.read_text(encoding="utf-8") == "good movie\n"
