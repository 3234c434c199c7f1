"""Numeric precision: the one `--precision` option of every job, checked and applied here and nowhere else.

    fp32  float32 throughout: the reference every other setting is measured against.
    bf16  bfloat16. Training: autocast (matmuls in bf16, softmax, norms and reductions kept in fp32 by torch's
          autocast lists; weights and optimizer fp32). Inference: a copy of the model in bf16 throughout (see
          `cast_for_inference`). Fast where the hardware computes bf16 natively: GPUs from Ampere on, CPUs
          with AVX-512 BF16 or AMX (a bf16 matmul runs ~2.3x an fp32 one with AVX-512 BF16, 4.5-6.6x with
          AMX). Elsewhere on a CPU torch emulates it: correct, but slower than fp32, so bertforge says so.
    fp16  float16 autocast (training adds loss scaling); meant for GPUs.
    int8  dynamic int8 Linear layers (`inference.int8`: activations smoothed, then quantised): CPU inference only.
    auto  bf16 where the hardware has it natively, fp32 elsewhere.

Jobs that train take fp32, bf16, fp16 or auto; jobs that predict take all five.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from typing import Literal, get_args

import torch
from torch import nn

from bertforge.errors import OptionError
from bertforge.hardware import native_bf16  # re-exported: the one check, shared with the benchmarks

log = logging.getLogger(__name__)

Precision = Literal["fp32", "bf16", "fp16", "int8"]  # what a job runs in, once `auto` is resolved
InferencePrecision = Literal["auto", "fp32", "bf16", "fp16", "int8"]
TrainingPrecision = Literal["auto", "fp32", "bf16", "fp16"]

_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: str, *, training: bool = False) -> None:
    """Refuse a value that is not a precision at all (or int8 for training), before any work starts."""
    allowed = get_args(TrainingPrecision if training else InferencePrecision)
    if precision not in allowed:
        extra = " (int8 is for inference only)" if precision == "int8" else ""
        raise OptionError(f"--precision {precision}: choose one of {', '.join(allowed)}{extra}")


def resolve_precision(precision: str, device: torch.device | str, *, training: bool = False) -> Precision:
    """`precision` checked against `device` (and against training, which has no int8), with `auto` resolved.
    Raises OptionError, naming the option and the fix, where the combination cannot run."""
    device = torch.device(device)
    check_precision(precision, training=training)
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    if precision == "int8" and device.type != "cpu":
        raise OptionError(f"--precision int8: dynamic int8 runs on the CPU only, not on {device}; "
                          "use --precision bf16 (or fp16) on an accelerator")
    if precision == "bf16":
        _check_bf16(device)
    return precision


def inference_device(device: str, precision: str) -> torch.device:
    """The device a job that predicts runs on: the one `--device` names, where `auto` is the CPU for int8 (which
    runs there only) and the best device here otherwise."""
    from bertforge.options import resolve_device

    return resolve_device("cpu" if precision == "int8" and device == "auto" else device)


def _check_bf16(device: torch.device) -> None:
    if device.type == "cuda" and not native_bf16(device):
        name = torch.cuda.get_device_name(device) if torch.cuda.is_available() else str(device)
        raise OptionError(f"--precision bf16: {name} has no bf16 support (GPUs from Ampere on have it); "
                          "use --precision fp16 or fp32")
    if device.type not in ("cuda", "cpu"):
        raise OptionError(f"--precision bf16: not supported on {device}; use --precision fp16 or fp32")
    if device.type == "cpu" and not native_bf16(device):
        log.warning("--precision bf16: this CPU has no native bf16 (AVX-512 BF16 or AMX), so torch emulates it: "
                    "results are right but slower than fp32; --precision auto picks fp32 here")


def autocast(precision: Precision, device: torch.device | str):
    """The context a forward (and loss) runs in: torch autocast for bf16/fp16, nothing for fp32 and int8
    (int8 changes the model's layers instead, once, before the first batch)."""
    if precision not in _AUTOCAST_DTYPES:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=_AUTOCAST_DTYPES[precision])


def cast_for_inference(module: nn.Module, precision: Precision) -> nn.Module:
    """The module an inference path calls, inside `inference_context(precision, device)`: `module` itself for
    fp32 and int8; otherwise a frozen copy, which does not follow later changes of `module`'s weights (it is
    for a model being served, not one being trained).

    bf16: the copy is bf16 throughout (weights, embeddings, norms, residual stream) and runs without autocast.
    torch's norm, softmax and GELU kernels still accumulate in fp32 and round only their outputs. Against
    autocast, which keeps the residual stream and norms in fp32, this saves a cast before every Linear and half
    the memory traffic of every element-wise step: all-MiniLM-L6-v2 embeddings 8% faster on a 2-core CPU with
    AVX-512 BF16, mean cosine to fp32 0.99995 instead of 0.99998 (docs/speed.md).

    fp16: the copy's Linear layers hold fp16 weights and it runs under fp16 autocast, so norms and the residual
    stream stay fp32, out of reach of fp16's narrow range. Autocast casts an fp32 weight at every call to
    exactly the values a one-off cast gives, so the outputs are bit for bit autocast's over `module`."""
    if precision not in _AUTOCAST_DTYPES:
        return module
    frozen = copy.deepcopy(module).requires_grad_(False)
    if precision == "bf16":
        return frozen.to(torch.bfloat16)
    for layer in frozen.modules():
        if isinstance(layer, nn.Linear):
            layer.to(_AUTOCAST_DTYPES[precision])
    return frozen


def inference_context(precision: Precision, device: torch.device | str):
    """The context the module from `cast_for_inference` runs in: fp16 autocast for the fp16 copy, nothing for
    the others (the bf16 copy is bf16 throughout; fp32 and int8 need none)."""
    return autocast(precision, device) if precision == "fp16" else contextlib.nullcontext()
