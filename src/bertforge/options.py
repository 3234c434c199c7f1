"""Option values checked in one place, before any file is read or any compute starts.

The command line checks every job's arguments with `check_options` before the job starts (jobs that
Python code calls directly check their settings too): an option is checked by its name, so
`--batch-size -8` gets the same one-line refusal from `finetune`, `embed` and `pretrain` instead of a
silent zero-step run, a crash deep inside torch, or 22 GB of attention scores.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from bertforge.errors import OptionError

if TYPE_CHECKING:
    import torch

# option name -> (lowest, highest, lowest allowed?, highest allowed?); None = unbounded. Options left at
# None (= "not set") are not checked.
_RANGES: dict[str, tuple[float | None, float | None, bool, bool]] = {}


def _rule(names: str, low: float | None, high: float | None, *, low_ok: bool = True, high_ok: bool = True) -> None:
    for name in names.split():
        _RANGES[name] = (low, high, low_ok, high_ok)


# counts that must be at least 1
_rule("batch_size eval_batch_size grad_accum_steps steps save_every eval_every log_every max_length "
      "max_predictions shard_tokens max_documents max_train_examples max_eval_examples "
      "max_query_length max_answer_length n_best_size stride threads batch_documents", 1, None)
_rule("epochs max_minutes max_grad_norm", 0, None, low_ok=False)
# zero allowed: top_k 0 = no top-k filter (generate), learning rate 0 = a frozen run, heldout_every 0 = none
_rule("top_k learning_rate heldout_every warmup_steps keep_checkpoints weight_decay eval_batches", 0, None)
_rule("masking_rate", 0, 1, low_ok=False)  # BERT §3.1: 0.15
_rule("dropout classifier_dropout warmup_ratio short_seq_prob pair_phase", 0, 1, high_ok=False)

# One name per concept in every job. The names they replaced are still accepted, on the command line and
# in YAML, until the next release (`--help` lists them); a job that still has a parameter of the old
# name (pretrain's `--data`, a prepared corpus) keeps its meaning.
RENAMED: dict[str, str] = {
    "lr": "learning_rate",
    "num_threads": "threads",
    "max_seq_length": "max_length",
    "doc_stride": "stride",
    "max_answer_tokens": "max_answer_length",
    "max_examples": "max_eval_examples",
    "train_examples": "max_train_examples",
    "data": "input",
    "corpus": "files",
    "budget_minutes": "max_minutes",
}


def current_name(name: str, accepted: set[str]) -> str:
    """The name a job knows an option by: `name` itself, or the name that replaced it (underscores)."""
    name = name.replace("-", "_")
    if name not in accepted and RENAMED.get(name) in accepted:
        return RENAMED[name]
    return name


_MEANING = {
    "epochs": "passes over the training data",
    "masking_rate": "the share of tokens to predict, e.g. 0.15",
    "dropout": "a probability, e.g. 0.1",
    "classifier_dropout": "a probability, e.g. 0.1",
    "warmup_ratio": "the share of steps with warm-up, e.g. 0.1",
    "pair_phase": "the second phase's share of the run, e.g. 0.4",
}


def option_name(name: str) -> str:
    """The command-line spelling of a parameter: batch_size -> --batch-size."""
    return "--" + name.replace("_", "-")


def check_options(values: Mapping[str, Any]) -> None:
    """Refuse option values outside their range (checked by name; unknown names pass) and an unusable
    device. `values` are a job's arguments; a settings dataclass among them is checked field by field."""
    for name, value in values.items():
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            check_options({field.name: getattr(value, field.name) for field in dataclasses.fields(value)})
        elif name in _RANGES and value is not None and not isinstance(value, bool):
            _check_range(name, value)
    if values.get("device") is not None:
        check_device(values["device"])


def _check_range(name: str, value: Any) -> None:
    low, high, low_ok, high_ok = _RANGES[name]
    if not isinstance(value, int | float) or not math.isfinite(value):
        raise OptionError(f"{option_name(name)} {value!r}: expected a finite number")
    too_low = low is not None and (value < low or (value == low and not low_ok))
    too_high = high is not None and (value > high or (value == high and not high_ok))
    if too_low or too_high:
        lower = "" if low is None else f"{low}{' <=' if low_ok else ' <'} "
        upper = "" if high is None else f" {'<=' if high_ok else '<'} {high}"
        if low == 1 and high is None:
            wanted = "a whole number of at least 1"
        elif low == 0 and high is None:
            wanted = "a positive number" if not low_ok else "zero or more"
        else:
            wanted = f"{lower}value{upper}"
        meaning = f" ({_MEANING[name]})" if name in _MEANING else ""
        raise OptionError(f"{option_name(name)} {value}: must be {wanted}{meaning}")


def check_length(option: str, value: int | None, limit: int, model: str) -> None:
    """A sequence length must fit the model's position-embedding table: longer inputs would index past it
    (an error deep inside torch) or, where the table grows, allocate attention that grows with its square."""
    if value is not None and value > limit:
        raise OptionError(f"{option} {value}: longer than the {limit} positions of {model} (max_position_embeddings); "
                          f"use at most {limit}")


def resolve_device(name: str) -> torch.device:
    """The device a job runs on: `auto` is the best one here (a CUDA GPU, else Apple's MPS, else the CPU)."""
    import torch

    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if hasattr(torch.backends, "mps") and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def check_device(name: str) -> None:
    """auto, cpu, cuda, cuda:N or mps — and the accelerator must be there."""
    import torch

    if name in ("auto", "cpu"):
        return
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise OptionError(f"--device {name}: not a device; use cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise OptionError(f"--device {name}: no CUDA GPU is available here; use --device cpu")
        if device.index is not None and device.index >= count:
            raise OptionError(f"--device {name}: there are only {count} GPU(s) (cuda:0..cuda:{count - 1})")
    elif device.type == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise OptionError(f"--device {name}: Apple MPS is not available here; use --device cpu")
    elif device.type != "cpu":
        raise OptionError(f"--device {name}: bertforge runs on cpu, cuda or mps")
