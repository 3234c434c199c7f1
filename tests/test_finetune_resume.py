"""`finetune --save-every N` checkpoints and `--resume true`: a run killed mid-epoch and resumed trains exactly the
weights of the uninterrupted run (CPU, dropout on); a truncated newest checkpoint is skipped for the one before;
a resume with a setting that changes the result is refused in one line naming the option."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import write_sentiment_csvs
from safetensors.torch import load_file

from bertforge.cli import call_job, main
from bertforge.errors import OptionError, OutputError
from bertforge.training import finetune, finetune_loop

# 40 examples at batch 8: 5 steps an epoch, 10 in all; checkpoints after steps 3, 6 and 9.
RUN = {"task": "classification", "epochs": 2, "batch_size": 8, "learning_rate": 1e-2, "warmup_ratio": 0.0,
       "max_length": 16, "seed": 5, "dropout": 0.1, "save_every": 3, "progress": False, "tensorboard": False}


class Killed(Exception):
    """Stands for a kill between two optimizer steps."""


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Sentences of varied length (so length grouping shapes the batch order), labelled by their sentiment word."""
    return write_sentiment_csvs(tmp_path_factory.mktemp("data"), train_rows=40, longest_filler=6)


def finetune_run(out, sentiment_encoder, data, *, validation=True, **options):
    sources = {"train": data / "train.csv", "validation": [data / "dev.csv"] if validation else None}
    return call_job(finetune.run, {"output_dir": out, "model": str(sentiment_encoder), **sources, **RUN, **options})


def killed_after(monkeypatch, steps: int) -> None:
    """Make the next run die while computing step `steps` + 1 (one accumulate_gradients call per step)."""
    calls = {"n": 0}
    real = finetune_loop._Stepper.accumulate_gradients

    def dies(self, batch):
        calls["n"] += 1
        if calls["n"] > steps:
            raise Killed
        return real(self, batch)

    monkeypatch.setattr(finetune_loop._Stepper, "accumulate_gradients", dies)


def interrupted_run(out, sentiment_encoder, data, monkeypatch, *, steps: int, **options) -> None:
    with monkeypatch.context() as patch:
        killed_after(patch, steps)
        with pytest.raises(Killed):
            finetune_run(out, sentiment_encoder, data, **options)


def without_times(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in record.items() if k != "elapsed_s"} for record in history]


def test_resumed_mid_epoch_trains_the_weights_of_the_uninterrupted_run(sentiment_encoder, data, tmp_path, monkeypatch):
    whole = finetune_run(tmp_path / "whole", sentiment_encoder, data)
    interrupted_run(tmp_path / "run", sentiment_encoder, data, monkeypatch, steps=7)  # dies in epoch 2, at step 8
    saved = sorted(p.name for p in (tmp_path / "run/checkpoints").iterdir())
    assert saved == ["latest", "step-0000003.pt", "step-0000006.pt"]  # --keep-checkpoints 2
    assert torch.load(tmp_path / "run/checkpoints/step-0000006.pt", weights_only=False)["done"] == 1  # mid-epoch 2

    resumed = finetune_run(tmp_path / "run", sentiment_encoder, data, resume=True)
    whole_weights, resumed_weights = load_file(tmp_path / "whole/model.safetensors"), \
        load_file(tmp_path / "run/model.safetensors")
    assert whole_weights.keys() == resumed_weights.keys()
    for name, tensor in whole_weights.items():
        assert torch.equal(tensor, resumed_weights[name]), name
    assert without_times(resumed.history) == without_times(whole.history)
    assert (resumed.best_metric, resumed.best_epoch) == (whole.best_metric, whole.best_epoch)
    assert whole.best_epoch == 1  # so the model saved is the best one the checkpoint carried across the kill
    logged = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert without_times(logged) == without_times(whole.history)  # each epoch once, the first from the checkpoint
    assert not (tmp_path / "run/checkpoints").exists()  # the finished run replaced the folder


def test_a_truncated_newest_checkpoint_is_skipped_for_the_one_before(sentiment_encoder, data, tmp_path, monkeypatch):
    whole = finetune_run(tmp_path / "whole", sentiment_encoder, data, validation=False)
    interrupted_run(tmp_path / "run", sentiment_encoder, data, monkeypatch, steps=7, validation=False)
    newest = tmp_path / "run/checkpoints/step-0000006.pt"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # a copy cut short

    with monkeypatch.context() as patch:  # counts the steps the resumed run takes
        steps = []
        real = finetune_loop._Stepper.accumulate_gradients
        patch.setattr(finetune_loop._Stepper, "accumulate_gradients",
                      lambda self, batch: steps.append(len(batch)) or real(self, batch))
        resumed = finetune_run(tmp_path / "run", sentiment_encoder, data, validation=False, resume=True)
    assert len(steps) == 7  # steps 4 to 10: from step-0000003.pt, in the middle of epoch 1
    for name, tensor in load_file(tmp_path / "whole/model.safetensors").items():
        assert torch.equal(tensor, load_file(tmp_path / "run/model.safetensors")[name]), name
    assert without_times(resumed.history) == without_times(whole.history)


def test_a_resume_with_a_setting_that_changes_the_result_is_refused(sentiment_encoder, data, tmp_path, monkeypatch,
                                                                   capsys):
    interrupted_run(tmp_path / "run", sentiment_encoder, data, monkeypatch, steps=4)
    with pytest.raises(OptionError, match=r"^--resume: --learning-rate is 0\.02 but the interrupted run used 0\.01 "):
        finetune_run(tmp_path / "run", sentiment_encoder, data, resume=True, learning_rate=2e-2)
    with pytest.raises(OptionError, match=r"^--resume: --batch-size is 4 "):
        finetune_run(tmp_path / "run", sentiment_encoder, data, resume=True, batch_size=4)
    args = ["finetune", "--model", str(sentiment_encoder), "--train", str(data / "train.csv"), "--validation",
            str(data / "dev.csv"), "--output-dir", str(tmp_path / "run"), "--epochs", "2", "--batch-size", "8",
            "--learning-rate", "0.01",
            "--warmup-ratio", "0", "--max-length", "16", "--save-every", "3", "--progress", "false",
            "--tensorboard", "false", "--resume", "true", "--seed", "6"]
    with pytest.raises(SystemExit):
        main(args)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "--seed is 6 but the interrupted run used 5" in lines[0]
    # Without --resume the unfinished run is not replaced silently: the message offers --resume.
    with pytest.raises(OutputError, match="pass --resume to continue that run"):
        finetune_run(tmp_path / "run", sentiment_encoder, data)
