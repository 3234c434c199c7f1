"""The Python commands of benchmarks/gpu.sh, run small on a CPU with benchmarks/synthetic.py's stand-ins: a GPU is
lent rarely and briefly, so a script that fails there on an argument or a missing file wastes it. These check that
each command runs to its end and writes its results, not its speeds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bertforge.hardware import bf16_skip_reason

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("transformers")


def run(*args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{args[0]} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def standins(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("standins")
    run("benchmarks/synthetic.py", str(out), "--no-base")  # the commands below take the all-MiniLM-L6-v2 shape
    return out


def test_the_pretraining_command_writes_its_json(standins: Path, tmp_path: Path) -> None:
    result = tmp_path / "pretrain.json"
    run("benchmarks/bench_pretrain.py", "--presets", "tiny", "--batch", "4", "--seq", "32", "--steps", "1",
        "--warmup", "1", "--threads", "2", "--json", str(result), "--no-compiled-peer")
    assert json.loads(result.read_text())["results"]


def test_the_inference_command_runs_on_data_without_sts_b(standins: Path) -> None:
    """The stand-ins have no STS-B: the int8 lines (CPU only) leave its Spearman out instead of failing."""
    out = run("benchmarks/bench_inference.py", "--threads", "2", "--data", str(standins / "data"), "--model",
              str(standins / "minilm"), "--texts", "24", "--classifier-texts", "8", "--repeats", "1",
              "--max-tokens", "65536", "--skip", "attention", "compile", "st")
    assert "no STS-B dev set" in out and "base-size sequence classifier" in out


def test_the_fine_tuning_command_writes_its_json(standins: Path, tmp_path: Path) -> None:
    result = tmp_path / "finetune.json"
    precision = "bf16" if bf16_skip_reason(torch.device("cpu")) is None else "fp32"
    run("benchmarks/bench_finetune.py", "--precision", precision, "--task", "sst2", "--data",
        str(standins / "data"), "--model", str(standins / "minilm"), "--train-examples", "64", "--eval-examples",
        "32", "--epochs", "1", "--threads", "2", "--peer", "loop", "--output", str(result))
    assert json.loads(result.read_text())


def test_the_stand_ins_never_overwrite_a_folder_that_exists(tmp_path: Path) -> None:
    """`synthetic.py ../shared` must not replace the real data sets with stand-ins: one line, nothing written."""
    real = tmp_path / "data" / "glue" / "SST-2" / "train.tsv"
    real.parent.mkdir(parents=True)
    real.write_text("sentence\tlabel\nreal data .\t1\n", encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run([sys.executable, "benchmarks/synthetic.py", str(tmp_path)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "already exist" in done.stderr and "Traceback" not in done.stderr
    assert real.read_text(encoding="utf-8") == "sentence\tlabel\nreal data .\t1\n"
    assert not (tmp_path / "minilm").exists()
