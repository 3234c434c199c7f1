"""The packed layout is a mode of the one BertModel forward: the same modules and weights give the padded
results for rotary and position-free models too, train with equal gradients, cut the last layer short to
[CLS] (or any chosen tokens) in both layouts, and refuse what they cannot do with a clear message."""

from __future__ import annotations

import pytest
import torch

from bertforge.config import BertConfig
from bertforge.model import BertModel
from bertforge.model.packed import Packing, pack

# Odd sizes expose transposes and head-split bugs (after Hugging Face's model tester).
ODD = BertConfig(vocab_size=99, hidden_size=36, num_layers=2, num_heads=3, intermediate_size=37,
                 max_position_embeddings=64, hidden_dropout=0.0, attention_dropout=0.0)
LENGTHS = [7, 1, 13, 4]


def _batch(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    seqs = [torch.randint(5, 99, (n,), generator=gen).tolist() for n in LENGTHS]
    types = [[0] * (n // 2) + [1] * (n - n // 2) for n in LENGTHS]
    longest = max(LENGTHS)
    ids = torch.zeros(len(seqs), longest, dtype=torch.long)
    type_ids = torch.zeros_like(ids)
    mask = torch.zeros_like(ids)
    for r, (s, t) in enumerate(zip(seqs, types, strict=True)):
        ids[r, : len(s)], type_ids[r, : len(t)], mask[r, : len(s)] = torch.tensor(s), torch.tensor(t), 1
    flat, cu = pack(seqs)
    flat_types, _ = pack(types)
    return (ids, mask, type_ids), (flat, cu, flat_types)


@pytest.mark.parametrize("position_type", ["learned", "sinusoidal", "rope", "none"])
@pytest.mark.parametrize("attention", ["padded", "block"])
def test_packed_mode_equals_padded_for_every_packable_position_scheme(position_type: str, attention: str) -> None:
    torch.manual_seed(0)
    model = BertModel(ODD.replace(position_embedding_type=position_type)).eval()
    (ids, mask, type_ids), (flat, cu, flat_types) = _batch()
    with torch.inference_mode():
        ref = model(ids, mask, type_ids)
        out = model(flat, token_type_ids=flat_types, packing=Packing(cu, attention=attention))
    assert out.sequence_output.shape == (sum(LENGTHS), 36)
    assert (out.sequence_output - ref.sequence_output[mask.bool()]).abs().max() < 1e-5
    assert (out.pooled_output - ref.pooled_output).abs().max() < 1e-5


def test_packed_mode_trains_with_the_padded_gradients() -> None:
    """In training mode (dropout 0 here) the packed layout gives the same loss gradient as the padded one."""
    torch.manual_seed(0)
    model = BertModel(ODD).train()
    (ids, mask, type_ids), (flat, cu, flat_types) = _batch(1)
    model(ids, mask, type_ids).sequence_output[mask.bool()].square().mean().backward()
    padded_grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    model(flat, token_type_ids=flat_types, packing=Packing(cu)).sequence_output.square().mean().backward()
    for name, p in model.named_parameters():
        if name in padded_grads:
            assert (p.grad - padded_grads[name]).abs().max() < 1e-6, name


def test_first_token_only_in_the_padded_layout() -> None:
    torch.manual_seed(0)
    model = BertModel(ODD).eval()
    (ids, mask, type_ids), _ = _batch(2)
    with torch.inference_mode():
        full = model(ids, mask, type_ids)
        first = model(ids, mask, type_ids, first_token_only=True)
    assert first.sequence_output.shape == (len(LENGTHS), 1, 36)
    assert (first.sequence_output[:, 0] - full.sequence_output[:, 0]).abs().max() < 1e-6
    assert (first.pooled_output - full.pooled_output).abs().max() < 1e-6


def test_finish_only_in_both_layouts() -> None:
    """finish_only: the last layer finishes the marked tokens only, row-major, with each sequence's [CLS] for the
    pooler; the same states as the full forward, padded and packed."""
    torch.manual_seed(0)
    model = BertModel(ODD).eval()
    (ids, mask, type_ids), (flat, cu, flat_types) = _batch(3)
    chosen = mask.bool() & (torch.arange(ids.shape[1]) % 3 == 0)  # position 0 of every sequence among them
    with torch.inference_mode():
        full = model(ids, mask, type_ids)
        cut = model(ids, mask, type_ids, finish_only=chosen)
        packed = model(flat, token_type_ids=flat_types, packing=Packing(cu), finish_only=chosen[mask.bool()])
    for out in (cut, packed):
        assert out.sequence_output.shape == (int(chosen.sum()), 36)
        assert (out.sequence_output - full.sequence_output[chosen]).abs().max() < 1e-5
        assert (out.pooled_output - full.pooled_output).abs().max() < 1e-5
    without_cls = chosen.clone()
    without_cls[2, 0] = False
    with pytest.raises(ValueError, match="first token: the pooler reads it"):
        model(ids, mask, type_ids, finish_only=without_cls)
    with pytest.raises(ValueError, match="not both"):
        model(ids, mask, type_ids, finish_only=chosen, first_token_only=True)
    with pytest.raises(ValueError, match="exclude causal and output_hidden_states"):
        model(ids, mask, type_ids, finish_only=chosen, output_hidden_states=True)
    for wrong in (chosen.long(), chosen[:, :3]):
        with pytest.raises(ValueError, match="bool mask shaped like input_ids"):
            model(ids, mask, type_ids, finish_only=wrong)


def test_packed_mode_refuses_what_it_cannot_do() -> None:
    (ids, mask, _), (flat, cu, _) = _batch()
    model = BertModel(ODD).eval()
    with pytest.raises(ValueError, match="one row"):
        model(ids, packing=Packing(cu))
    with pytest.raises(ValueError, match="not an attention_mask"):
        model(flat, torch.ones_like(flat), packing=Packing(cu))
    with pytest.raises(ValueError, match="padded layout"):
        model(flat, packing=Packing(cu), output_attentions=True)
    with pytest.raises(ValueError, match="attention must be padded, nested or block"):
        Packing(cu, attention="sparse")
    for scheme in ("relative_key", "alibi"):
        with pytest.raises(ValueError, match=f"not '{scheme}'.*use the padded forward"):
            BertModel(ODD.replace(position_embedding_type=scheme)).eval()(flat, packing=Packing(cu))


def test_a_packed_row_may_be_longer_than_the_position_table() -> None:
    """Positions count inside each sequence, so 3 × 40 tokens fit a 64-position model; 65 in one do not."""
    model = BertModel(ODD).eval()
    flat, cu = pack([[5] * 40] * 3)
    with torch.inference_mode():
        assert model(flat, packing=Packing(cu)).sequence_output.shape == (120, 36)
        flat, cu = pack([[5] * 65])
        with pytest.raises(ValueError, match="beyond max_position_embeddings"):
            model(flat, packing=Packing(cu))


@pytest.mark.parametrize("attention", ["padded", "block"])
@pytest.mark.parametrize("first_token_only", [False, True])
def test_packed_forward_with_filler_tokens_returns_the_real_sequences_unchanged(attention, first_token_only) -> None:
    """token_multiple: the model runs on a multiple of it tokens (filler sequences no longer than the longest real
    one, so the attention keeps its width), and every output holds the real sequences only, as without fillers."""
    from bertforge.model.packed import packed_forward

    torch.manual_seed(0)
    model = BertModel(ODD).eval()
    _, (flat, cu, flat_types) = _batch(2)  # 25 tokens, the longest 13
    seen = []
    model.embeddings.register_forward_hook(lambda _m, args, _out: seen.append(args[0].shape[0]))
    with torch.inference_mode():
        plain, filled = (packed_forward(model, flat, cu, flat_types, attention=attention, token_multiple=multiple,
                                        output_hidden_states=not first_token_only, first_token_only=first_token_only)
                         for multiple in (1, 16))
    assert seen == [25, 32]  # 7 filler tokens
    assert torch.equal(filled.cu_seqlens, plain.cu_seqlens)
    assert filled.sequence_output.shape == plain.sequence_output.shape
    torch.testing.assert_close(filled.sequence_output, plain.sequence_output)
    torch.testing.assert_close(filled.pooled_output, plain.pooled_output)
    for ours, theirs in zip(filled.hidden_states or (), plain.hidden_states or (), strict=True):
        torch.testing.assert_close(ours, theirs)


def test_filler_sequences_are_no_longer_than_the_longest_real_one() -> None:
    from bertforge.model.packed import _with_fillers, packed_forward

    ids, cu = torch.arange(1, 12), torch.tensor([0, 3, 7, 11])  # 11 tokens, the longest 4
    filled_ids, filled_cu, types = _with_fillers(ids, cu, None, 32)
    assert len(filled_ids) == 32 and types is None
    assert filled_cu.tolist() == [0, 3, 7, 11, 15, 19, 23, 27, 31, 32]  # 21 fillers: five of 4, one of 1
    assert torch.equal(filled_ids[:11], ids) and not filled_ids[11:].any()
    assert _with_fillers(ids, cu, ids, 11)[0] is ids  # already a multiple: unchanged
    model = BertModel(ODD).eval()
    with pytest.raises(ValueError, match="token_multiple must be a positive whole number"):
        packed_forward(model, ids, cu, token_multiple=0)


def test_a_kernel_build_per_shape_is_paid_for_with_padding_only_where_it_happens() -> None:
    from bertforge.hardware import MATMUL_ROW_MULTIPLE, matmul_row_multiple

    assert matmul_row_multiple("bf16", "cpu") == matmul_row_multiple("fp16", "cpu") == MATMUL_ROW_MULTIPLE
    assert matmul_row_multiple("fp32", "cpu") == matmul_row_multiple("int8", "cpu") == 1  # MKL, fbgemm: no build
    assert matmul_row_multiple("bf16", "cuda") == 1
