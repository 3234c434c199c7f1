"""`torchrun ... finetune`: 2 CPU processes over gloo train the weights 1 process trains (every step on the same
global batch, length-grouped, split between the processes), only rank 0 writes, and a 2-process run killed
mid-epoch resumes to the same weights."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import write_sentiment_csvs
from safetensors.torch import load_file

from bertforge.cli import call_job
from bertforge.errors import OptionError
from bertforge.training import finetune, finetune_loop
from bertforge.training.distributed import World

# 34 examples at batch 8: 5 steps an epoch, the last on 2 examples. With 2 processes x 2 accumulation steps a
# full batch is 4 micro-batches of 2; the short one is 2 of 1, both rank 0's: rank 1 steps with no example.
RUN = {"task": "classification", "epochs": 2, "batch_size": 8, "learning_rate": 0.5, "warmup_ratio": 0.0,
       "max_grad_norm": 1e9, "max_length": 16, "seed": 5, "dropout": 0.0, "progress": False, "tensorboard": False}


class Killed(Exception):
    """Stands for a kill between two optimizer steps."""


def sgd(model, *, lr, weight_decay):
    """Plain SGD in place of AdamW: its step is the gradient itself, so a gradient averaged where it must be
    summed (half the step), or one process's gradient alone, moves the weights elsewhere. AdamW's first steps
    divide the gradient by its own size and would hide a wrong scale."""
    return torch.optim.SGD(model.parameters(), lr=lr)


def finetune_with_sgd(options: dict) -> None:
    """One process's run (the job joins the others)."""
    finetune_loop.build_adamw = sgd  # a spawned process: nothing else runs in it
    call_job(finetune.run, options)


def killed_then_resumed(options: dict, die_after: int, steps_after_resume: int) -> None:
    """One process's run that dies while computing step `die_after` + 1, then the same command with --resume
    true in the same process (as tests/test_finetune_resume.py does in one), which must take only the steps
    after the last checkpoint: a run that started over would end with the same weights."""
    real, calls, budget = finetune_loop._Stepper.accumulate_gradients, [], {"steps": die_after}

    def counted(self, batch):
        calls.append(len(batch))
        if len(calls) > budget["steps"]:
            raise Killed
        return real(self, batch)

    finetune_loop._Stepper.accumulate_gradients = counted
    with pytest.raises(Killed):
        finetune_with_sgd(options)
    calls.clear()
    budget["steps"] = math.inf
    finetune_with_sgd({**options, "resume": True})
    assert len(calls) == steps_after_resume


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Sentences of 2 to 9 words (so length grouping shapes the batches and micro-batches pad to different
    widths), labelled by their sentiment word."""
    return write_sentiment_csvs(tmp_path_factory.mktemp("data"), train_rows=34, longest_filler=8)


def options(out, sentiment_encoder, data, *, validation: bool, **changes) -> dict:
    return {"output_dir": out, "model": str(sentiment_encoder), "train": data / "train.csv",
            "validation": [data / "dev.csv"] if validation else None, **RUN, **changes}


def assert_same_weights(a, b) -> None:
    first, second = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert first.keys() == second.keys()
    for name, tensor in first.items():
        torch.testing.assert_close(second[name], tensor, rtol=0, atol=1e-5, msg=name)


def logged(out) -> list[dict]:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "elapsed_s"} for r in records]


def test_two_processes_train_the_weights_of_one(sentiment_encoder, data, tmp_path, monkeypatch, run_processes):
    """The saved model is the last epoch's (no validation set), after 10 steps of SGD at learning rate 0.5: had
    the processes not summed their gradients (each stepping on its own half of the batch), or averaged them
    (half the step), the weights would differ by far more than float rounding."""
    monkeypatch.setattr(finetune_loop, "build_adamw", sgd)
    single = call_job(finetune.run, options(tmp_path / "single", sentiment_encoder, data, validation=False))
    run_processes(finetune_with_sgd, options(tmp_path / "two", sentiment_encoder, data, validation=False,
                                             grad_accum_steps=2))
    start = load_file(sentiment_encoder / "model.safetensors")["embeddings.word_embeddings.weight"]
    trained = load_file(tmp_path / "single/model.safetensors")["bert.embeddings.word_embeddings.weight"]
    assert (trained - start).abs().max() > 1e-2  # the steps moved the weights: not two untouched copies compared
    assert_same_weights(tmp_path / "single", tmp_path / "two")
    twice = logged(tmp_path / "two")  # one writer: each epoch once, with the loss of the whole batches
    assert [r["epoch"] for r in twice] == [1, 2]
    for one, two in zip(single.history, twice, strict=True):
        assert two["train_loss"] == pytest.approx(one["train_loss"], rel=1e-5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["single", "two"]  # no temporary folder left behind
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(p.name for p in (tmp_path / "single")
                                                                          .iterdir())


def test_a_two_process_run_killed_mid_epoch_resumes_to_the_same_model(sentiment_encoder, data, tmp_path, monkeypatch,
                                                                      run_processes):
    """Rank 0 evaluates after every epoch and the others follow its record (best epoch, the model kept); the
    checkpoints, written by rank 0 alone, carry the run across the kill."""
    monkeypatch.setattr(finetune_loop, "build_adamw", sgd)
    whole = call_job(finetune.run, options(tmp_path / "whole", sentiment_encoder, data, validation=True))
    run = options(tmp_path / "run", sentiment_encoder, data, validation=True, save_every=3)
    run_processes(killed_then_resumed, run, 7, 4)  # dies in epoch 2 at step 8; resumes after step 6
    assert_same_weights(tmp_path / "whole", tmp_path / "run")
    resumed = logged(tmp_path / "run")
    assert [r["epoch"] for r in resumed] == [1, 2]
    for one, two in zip(whole.history, resumed, strict=True):
        assert two == pytest.approx({k: v for k, v in one.items() if k != "elapsed_s"}, rel=1e-5)
    best = json.loads((tmp_path / "run/best_metrics.json").read_text())["epoch"]
    assert best == whole.best_epoch


def test_a_batch_the_processes_cannot_split_evenly_is_one_line(sentiment_encoder, data, tmp_path):
    settings = finetune_loop.TrainSettings(batch_size=6, grad_accum_steps=2)
    with pytest.raises(OptionError, match=r"^--batch-size 6 is not divisible by 2 processes x --grad-accum-steps 2; "
                                          r"choose a multiple of 4$"):
        finetune._check_batch_split(settings, World(rank=1, size=2))
    finetune._check_batch_split(settings, World())  # one process: the accumulation steps alone must divide it
