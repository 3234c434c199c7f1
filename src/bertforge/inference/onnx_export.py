"""Export a model to ONNX with dynamic batch and sequence axes, and check it against PyTorch.

Inputs are always `input_ids`, `attention_mask`, `token_type_ids` ([B, T] int64); the outputs are named
after the model: BertModel -> last_hidden_state [B, T, H], pooler_output [B, H]; sequence classifier ->
logits [B, C]; token classifier -> logits [B, T, C]; QA -> start_logits, end_logits [B, T];
masked LM -> logits [B, T, V].
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bertforge.heads import (
    BertForPreTraining,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertForTokenClassification,
)
from bertforge.inference.predictor import encoder_of
from bertforge.model import BertModel

INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class _Exportable(nn.Module):
    """The model's forward with plain tensor outputs, written for torch.export: the key-padding mask is
    always applied (BertModel skips it when nothing is padded, a data-dependent branch export cannot keep),
    which gives the same numbers for unpadded inputs."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.bert = encoder_of(model)

    def forward(self, input_ids, attention_mask, token_type_ids):
        mask = attention_mask.bool()[:, None, None, :]  # [B, 1, 1, T]
        x = self.bert.embeddings(input_ids, token_type_ids)  # [B, T, H]
        for layer in self.bert.layers:
            x, _ = layer(x, mask)
        pooled = self.bert.pooler(x) if self.bert.pooler is not None else None  # [B, H]
        model = self.model
        if isinstance(model, BertModel):
            return (x,) if pooled is None else (x, pooled)
        # Each head's own head_logits, as its forward applies it (dropout is off in eval mode).
        if isinstance(model, BertForSequenceClassification):
            return (model.head_logits(pooled),)  # [B, C]
        logits = model.head_logits(x)  # QA [B, T, 2], masked LM [B, T, V], token classifier [B, T, C]
        return tuple(logits.unbind(-1)) if isinstance(model, BertForQuestionAnswering) else (logits,)


def output_names(model: nn.Module) -> list[str]:
    if isinstance(model, BertModel):
        return ["last_hidden_state"] + (["pooler_output"] if model.pooler is not None else [])
    if isinstance(model, BertForQuestionAnswering):
        return ["start_logits", "end_logits"]
    if isinstance(model, (BertForPreTraining, BertForSequenceClassification, BertForTokenClassification)):
        return ["logits"]
    raise TypeError(f"no ONNX export for {type(model).__name__}")


def _example(model: nn.Module) -> tuple[torch.Tensor, ...]:
    ids = torch.randint(5, min(model.config.vocab_size, 1000), (2, 7))
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0
    return ids, mask, torch.zeros_like(ids)


def export_onnx(model: nn.Module, path: str | Path, *, opset: int = 18) -> Path:
    """Write `model` (eval mode, CPU) to `path` as ONNX with dynamic batch and sequence axes
    (torch.export-based exporter; needs `onnxscript`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval().cpu()
    batch = torch.export.Dim("batch", min=1, max=4096)
    sequence = torch.export.Dim("sequence", min=1, max=model.config.max_position_embeddings)
    shapes = {name: {0: batch, 1: sequence} for name in INPUTS}
    for noisy in ("onnx_ir", "onnxscript"):  # one INFO line per optimisation pass otherwise
        logging.getLogger(noisy).setLevel(logging.WARNING)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(_Exportable(model), _example(model), input_names=list(INPUTS),
                                    output_names=output_names(model), dynamic_shapes=shapes, opset_version=opset,
                                    dynamo=True, verbose=False)
    program.save(str(path))
    return path


def check_onnx(model: nn.Module, path: str | Path, inputs: dict[str, np.ndarray]) -> float:
    """Largest |ONNX Runtime - PyTorch| over all outputs for `inputs` ([B, T] int64 arrays)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {k: inputs[k].astype(np.int64) for k in INPUTS})
    with torch.inference_mode():
        expected = _Exportable(model.eval())(*(torch.from_numpy(inputs[k]).long() for k in INPUTS))
    return max(float(np.abs(g - e.numpy()).max()) for g, e in zip(got, expected, strict=True))


def run(model: str, output: Path = Path("model.onnx"), opset: int = 18) -> Path:
    """Export a model directory to ONNX (dynamic batch and sequence axes) and verify it with ONNX Runtime.

    Args:
        model: Model directory; the task head is the one its config.json names.
        output: The .onnx file to write.
        opset: ONNX opset version.
    """
    from bertforge.inference.pipelines import load_pipeline

    loaded = load_pipeline(model)
    path = export_onnx(loaded.predictor.model, output, opset=opset)
    enc = loaded.predictor.tokenizer.encode(["a first short text", "and a second, somewhat longer text to pad"],
                                            padding="longest")
    inputs = {"input_ids": enc.input_ids, "attention_mask": enc.attention_mask, "token_type_ids": enc.token_type_ids}
    try:
        diff = check_onnx(loaded.predictor.model, path, inputs)
        print(f"wrote {path} ({loaded.architecture}); ONNX Runtime vs PyTorch max |difference| {diff:.2e}")
    except ImportError:
        print(f"wrote {path} ({loaded.architecture}); install onnxruntime to verify it")
    return path
