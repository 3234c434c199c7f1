"""Option values are checked by name, in one place, before a job runs."""

from __future__ import annotations

import pytest

from bertforge.cli import JOBS, _load, option_defaults
from bertforge.errors import OptionError
from bertforge.options import check_device, check_options, resolve_device


@pytest.mark.parametrize("name", list(JOBS))
def test_every_jobs_defaults_pass_the_checks(name: str) -> None:
    check_options(option_defaults(_load(JOBS[name])))


@pytest.mark.parametrize(("values", "message"), [
    ({"batch_size": 0}, "--batch-size 0: must be a whole number of at least 1"),
    ({"epochs": 0.0}, "--epochs 0.0: must be a positive number (passes over the training data)"),
    ({"learning_rate": -1e-5}, "--learning-rate -1e-05: must be zero or more"),
    ({"masking_rate": 0}, "--masking-rate 0: must be 0 < value <= 1 (the share of tokens to predict, e.g. 0.15)"),
    ({"warmup_ratio": 1.0}, "--warmup-ratio 1.0: must be 0 <= value < 1 (the share of steps with warm-up, e.g. 0.1)"),
    ({"max_minutes": float("nan")}, "--max-minutes nan: expected a finite number"),
])
def test_out_of_range_values_name_the_option(values, message) -> None:
    with pytest.raises(OptionError) as info:
        check_options(values)
    assert str(info.value) == message


def test_unset_flags_and_unknown_names_pass() -> None:
    check_options({"batch_size": None, "steps": 1, "masking_rate": 1.0, "top_k": 0, "something_else": -5,
                   "progress": False, "dropout": 0.0})


def test_devices() -> None:
    check_device("cpu")
    check_device("auto")
    with pytest.raises(OptionError, match="--device gpu: not a device"):
        check_device("gpu")
    with pytest.raises(OptionError, match="bertforge runs on cpu, cuda or mps"):
        check_device("meta")


def test_auto_is_the_best_device_here(monkeypatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cpu") == torch.device("cpu")
