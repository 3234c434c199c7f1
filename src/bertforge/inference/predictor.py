"""Fast batched inference: length-sorted token-budget batches, packed (unpadded) tokens, inference_mode.

`Predictor` owns a model (a BertModel or any task head around one) and its tokenizer and yields the encoder's
outputs for many texts with as little wasted work as possible:
- texts are sorted by length and cut into batches by a token budget (many short texts per batch, few long);
- in "packed" mode the encoder's own forward runs in its packed layout (`model/packed.py`): every position-wise
  layer works on the real tokens only;
- "padded" mode is the plain forward pass, kept as the reference the packed mode is tested against;
- `precision` (bertforge/precision.py) is the same option as every job's `--precision`: bf16 runs a copy of the
  encoder in bf16 throughout (on GPUs and on CPUs with native bf16), fp16 one under autocast; int8 swaps the
  Linear layers (all but the feed-forward outputs) for torch's dynamic int8 version after smoothing the
  activations' outlier channels into the weights (`inference/int8.py`, calibrated on its built-in sentences;
  CPU only; changes the numbers a little).
Shapes: B = batch, N = real tokens in a batch, T = longest sequence, H = hidden size.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from bertforge.hardware import matmul_row_multiple
from bertforge.inference.int8 import quantize_int8, smoothed_int8  # noqa: F401 (tests, benchmarks import quantize_int8 here)
from bertforge.model import BertModel
from bertforge.model.packed import PackedAttention, pack, packed_forward
from bertforge.model.positions import DISTANCE_BIAS
from bertforge.precision import InferencePrecision, cast_for_inference, inference_context, resolve_precision
from bertforge.tokenizer import BertTokenizer, Encoding

Mode = Literal["packed", "padded"]


@dataclass
class EncodedBatch:
    """Encoder outputs for one batch, always in the packed layout.

    indices: [B] positions of these texts in the caller's input list.
    sequence_output: [N, H] real tokens of all B texts, one after the other.
    cu_seqlens: [B + 1] where each text starts in sequence_output.
    pooled_output: [B, H] or None (model without pooler).
    hidden_states: L + 1 tensors [N, H] when requested.
    attentions: L tensors [B, A, T, T] (padded mode only, when requested).
    """

    indices: list[int]
    sequence_output: torch.Tensor
    cu_seqlens: torch.Tensor
    pooled_output: torch.Tensor | None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None

    def rows(self) -> torch.Tensor:
        """[N] which text of the batch (0..B-1) each packed token belongs to."""
        lengths = self.cu_seqlens.diff()
        return torch.repeat_interleave(torch.arange(len(lengths), device=lengths.device), lengths)

    def float(self) -> EncodedBatch:
        """This batch with every output in float32 (itself when it already is)."""
        def cast(states):
            return None if states is None else tuple(h.float() for h in states)

        pooled = None if self.pooled_output is None else self.pooled_output.float()
        return EncodedBatch(self.indices, self.sequence_output.float(), self.cu_seqlens, pooled,
                            cast(self.hidden_states), cast(self.attentions))

    def split(self, values: torch.Tensor) -> list[torch.Tensor]:
        """[N, ...] packed values -> B tensors [T_i, ...], one per text."""
        return list(values.split(self.cu_seqlens.diff().tolist()))


def token_budget_batches(lengths: Sequence[int], max_tokens: int, max_batch: int) -> list[list[int]]:
    """Index batches, longest texts first, each holding at most `max_tokens` padded tokens
    (batch size × its longest text) and `max_batch` texts; a text longer than the budget goes alone."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        longest = lengths[current[0]] if current else lengths[i]
        if current and ((len(current) + 1) * longest > max_tokens or len(current) >= max_batch):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def encoder_of(model: nn.Module) -> BertModel:
    """The BertModel inside a task model (`.bert`), or the model itself."""
    if isinstance(model, BertModel):
        return model
    inner = getattr(model, "bert", None)
    if isinstance(inner, BertModel):
        return inner
    raise TypeError(f"{type(model).__name__} is not a BertModel and has no .bert encoder")


class Predictor:
    """Runs a model over many texts quickly; results come back in input order.

    Args:
        model: A BertModel or a task model with a `.bert` encoder, in eval mode for packed mode.
        tokenizer: The model's tokenizer.
        mode: "packed" (no work on padding) or "padded" (the plain forward pass).
        attention: How packed mode attends within each text: "padded", "nested" or "block"
            (see attention.packed_attention; "padded" measured fastest on CPU).
        max_tokens: Token budget of one batch (batch size × longest text in it). Default: 2048 on a CPU, where
            larger batches outgrow the cache (all-MiniLM-L6-v2, 2 cores: 226 texts/s at 2048, 193 at 8192;
            benchmarks/predictor_budget.py), and 8192 on a GPU, which wants large batches.
        max_batch: Most texts in one batch.
        max_length: Texts are truncated to this many tokens (default: the model's maximum).
        precision: fp32, bf16 (a bf16 copy), fp16 (autocast), int8 (a smoothed, dynamically quantised copy; CPU) or
            auto (bf16 where the hardware has it natively); see bertforge/precision.py.
        task_settings: The settings the model was fine-tuned with (`tasks.registry.saved_task_settings`),
            which the pipelines take as their defaults; {} for a model without them.
    """

    def __init__(self, model: nn.Module, tokenizer: BertTokenizer, *, mode: Mode = "packed",
                 attention: PackedAttention = "padded", max_tokens: int | None = None, max_batch: int = 256,
                 max_length: int | None = None, precision: InferencePrecision = "fp32",
                 task_settings: Mapping[str, Any] | None = None) -> None:
        if mode not in ("packed", "padded"):
            raise ValueError(f"mode must be packed or padded, not {mode!r}")
        device = next(model.parameters()).device if any(True for _ in model.parameters()) else torch.device("cpu")
        self.precision = resolve_precision(precision, device)
        if self.precision == "int8":
            model = smoothed_int8(model, tokenizer)  # calibrated on built-in sentences, not the caller's texts
        self.model = model
        self.encoder = encoder_of(model)
        # What run() calls: in bf16 a copy in bf16 throughout, in fp16 one with its Linear weights cast once.
        self._runner = cast_for_inference(self.encoder, self.precision)
        self.tokenizer = tokenizer
        if self.encoder.config.position_embedding_type in DISTANCE_BIAS:
            mode = "padded"  # relative and ALiBi positions score a padded [T, T] grid of distances
        self.mode = mode
        self.attention = attention
        self.max_tokens = max_tokens or (2048 if device.type == "cpu" else 8192)
        self.max_batch = max_batch
        limit = self.encoder.config.max_position_embeddings
        self.max_length = min(max_length or tokenizer.model_max_length, limit)
        self.device = device
        self.task_settings = dict(task_settings or {})

    def tokenize(self, texts: Sequence[str], pairs: Sequence[str] | None = None, **kwargs) -> Encoding:
        kwargs.setdefault("max_length", self.max_length)
        return self.tokenizer.encode(list(texts), list(pairs) if pairs is not None else None, **kwargs)

    @torch.inference_mode()
    def run(self, enc: Encoding, *, output_hidden_states: bool = False, output_attentions: bool = False,
            first_token_only: bool = False) -> Iterator[EncodedBatch]:
        """Encoder outputs for every text of `enc` (unpadded lists), batch by batch, longest texts first.
        Attention probabilities need the padded path, so `output_attentions` forces it. `first_token_only`
        (packed mode) finishes the last layer for [CLS] only: enough for poolers and [CLS] classifiers;
        sequence_output is then [B, H]."""
        lengths = [len(ids) for ids in enc.input_ids]
        for batch in token_budget_batches(lengths, self.max_tokens, self.max_batch):
            ids = [enc.input_ids[i] for i in batch]
            types = [enc.token_type_ids[i] for i in batch]
            with inference_context(self.precision, self.device):
                if self.mode == "packed" and not output_attentions:
                    encoded = self._packed(batch, ids, types, output_hidden_states, first_token_only)
                else:
                    encoded = self._padded(batch, ids, types, output_hidden_states, output_attentions)
            # Only the encoder runs in bf16/fp16: the heads and poolings of the caller get fp32, as their weights are.
            yield encoded.float()

    def _packed(self, batch, ids, types, output_hidden_states, first_token_only=False) -> EncodedBatch:
        flat_ids, cu_seqlens = pack(ids)
        flat_types, _ = pack(types)
        out = packed_forward(self._runner, flat_ids.to(self.device), cu_seqlens.to(self.device),
                             flat_types.to(self.device), attention=self.attention,
                             output_hidden_states=output_hidden_states, first_token_only=first_token_only,
                             token_multiple=matmul_row_multiple(self.precision, self.device))
        return EncodedBatch(batch, out.sequence_output, out.cu_seqlens, out.pooled_output, out.hidden_states)

    def _padded(self, batch, ids, types, output_hidden_states, output_attentions) -> EncodedBatch:
        longest = max(len(x) for x in ids)
        input_ids = torch.full((len(ids), longest), self.tokenizer.pad_id, dtype=torch.long)
        token_types = torch.zeros_like(input_ids)
        mask = torch.zeros_like(input_ids)
        for row, (x, t) in enumerate(zip(ids, types, strict=True)):
            input_ids[row, : len(x)] = torch.tensor(x)
            token_types[row, : len(x)] = torch.tensor(t)
            mask[row, : len(x)] = 1
        out = self._runner(input_ids.to(self.device), mask.to(self.device), token_types.to(self.device),
                           output_hidden_states=output_hidden_states, output_attentions=output_attentions)
        real = mask.bool().to(self.device)  # [B, T] -> packed order is row-major over real tokens
        _, cu_seqlens = pack(ids)
        states = tuple(h[real] for h in out.hidden_states) if out.hidden_states is not None else None
        return EncodedBatch(batch, out.sequence_output[real], cu_seqlens.to(self.device), out.pooled_output,
                            states, out.attentions)
