"""The two kernels that replace torch's fused ones where those are slow: `attend` (bf16 attention on a CPU)
and `summed_cross_entropy` (the vocabulary loss of pre-training), each against the plain torch computation."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from bertforge import compiled
from bertforge.model import attention
from bertforge.model.attention import attend
from bertforge.training import vocab_loss
from bertforge.training.vocab_loss import summed_cross_entropy


@pytest.fixture(params=["fused", "chunked"])
def way(request, monkeypatch):
    """Each vocabulary-loss test runs both ways: the kernels torch.compile builds for a CPU, and the chunked eager
    way (a GPU's, and the fallback where torch.compile fails). The fused way must not have fallen back."""
    if request.param == "chunked":
        monkeypatch.setattr(compiled, "UNAVAILABLE", ["the test asks for the chunked way"])
    yield request.param
    if request.param == "fused":
        assert not compiled.UNAVAILABLE, f"torch.compile failed here: {compiled.UNAVAILABLE}"


def bias_tolerance(dtype: torch.dtype, way: str) -> dict[str, float]:
    """The fused way sums bf16 gradients into the bias's by a bf16 matmul, which rounds the sums to bf16 (as the
    decoder weight's gradient is under autocast); the chunked way sums the fp32 ones."""
    return {"atol": 4e-3, "rtol": 1e-2} if dtype == torch.bfloat16 and way == "fused" else {"atol": 1e-5, "rtol": 1e-5}


def qkv(dtype: torch.dtype, batch: int = 3, heads: int = 2, length: int = 9, head: int = 8):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(batch, heads, length, head, generator=g).to(dtype).requires_grad_() for _ in range(3)]


def block_mask(batch: int = 3, length: int = 9) -> torch.Tensor:
    """[B, 1, T, T] True within each of a row's packed windows (two or three windows per row)."""
    window = torch.tensor([[0] * 4 + [1] * 5, [0] * 9, [0] * 2 + [1] * 3 + [2] * 4])[:batch, :length]
    return window[:, None, :, None] == window[:, None, None, :]


@pytest.mark.parametrize("mask_kind", ["none", "bool", "float", "key padding"])
def test_bf16_attention_on_a_cpu_follows_fp32_sdpa_forward_and_backward(mask_kind: str) -> None:
    q, k, v = qkv(torch.bfloat16)
    mask = {"none": None, "bool": block_mask(), "key padding": torch.arange(9)[None, None, None, :] < 6,
            "float": torch.zeros(3, 1, 9, 9).masked_fill(~block_mask(), float("-inf"))}[mask_kind]
    out = attend(q, k, v, mask)
    grad_out = torch.randn_like(out)
    out.backward(grad_out)
    q32, k32, v32 = (t.detach().float().requires_grad_() for t in (q, k, v))
    ref = F.scaled_dot_product_attention(q32, k32, v32, attn_mask=mask)
    ref.backward(grad_out.float())
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, atol=2e-2, rtol=2e-2)
    for ours, theirs in ((q, q32), (k, k32), (v, v32)):
        torch.testing.assert_close(ours.grad.float(), theirs.grad, atol=5e-2, rtol=5e-2)


def test_bf16_attention_keeps_each_window_to_itself() -> None:
    q, k, v = qkv(torch.bfloat16)
    mask = block_mask()
    changed = v.detach().clone()
    changed[0, :, 4:] += 10  # the second window of row 0
    before, after = attend(q, k, v, mask), attend(q, k, changed, mask)
    assert torch.equal(before[0, :, :4], after[0, :, :4])  # the first window never saw it
    assert not torch.equal(before[0, :, 4:], after[0, :, 4:])


def test_bf16_attention_gives_a_query_with_no_key_finite_output() -> None:
    q, k, v = qkv(torch.bfloat16)
    mask = block_mask().clone()
    mask[0, 0, 0] = False  # (its gradient path: q requires grad)  # query 0 of row 0 may attend nowhere
    assert torch.isfinite(attend(q, k, v, mask)).all()


def test_other_dtypes_and_long_inference_rows_stay_on_sdpa(monkeypatch) -> None:
    calls = []
    real_sdpa = F.scaled_dot_product_attention

    def counted_sdpa(*args, **kwargs):
        calls.append(1)
        return real_sdpa(*args, **kwargs)

    monkeypatch.setattr(attention.F, "scaled_dot_product_attention", counted_sdpa)
    attend(*qkv(torch.float32), block_mask())
    assert calls == [1]
    attend(*qkv(torch.bfloat16), block_mask())
    assert calls == [1]  # training in bf16 on the CPU: written out, no SDPA call
    with torch.no_grad():
        attend(*qkv(torch.bfloat16), block_mask())
    assert calls == [1]  # inference whose scores fit in the cache: written out too
    monkeypatch.setattr(attention, "_WRITTEN_OUT_MAX_SCORES", 3 * 2 * 9 * 9 - 1)
    with torch.no_grad():
        attend(*qkv(torch.bfloat16), block_mask())
    assert calls == [1, 1]  # inference on longer rows: SDPA's tiled forward


@pytest.mark.parametrize("mask_kind", ["none", "block", "key padding"])
def test_bf16_inference_attention_on_a_cpu_follows_fp32_sdpa(mask_kind: str) -> None:
    q, k, v = (t.detach() for t in qkv(torch.bfloat16, batch=3, heads=4, length=9, head=16))
    mask = {"none": None, "block": block_mask(), "key padding": torch.arange(9)[None, None, None, :] < 6}[mask_kind]
    with torch.inference_mode():
        out = attend(q, k, v, mask)
    ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, atol=2e-2, rtol=2e-2)


def test_bf16_attention_dropout_drops_in_training_only() -> None:
    q, k, v = qkv(torch.bfloat16)
    torch.manual_seed(0)
    assert not torch.equal(attend(q, k, v, None, dropout_p=0.5), attend(q, k, v, None))
    assert torch.equal(attend(q, k, v, None, dropout_p=0.0), attend(q, k, v, None))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("chunk_elements", [1 << 21, 3 * 50])  # one chunk; three rows per chunk, a ragged end
def test_summed_cross_entropy_is_torchs_value_gradient_and_accuracy(dtype, chunk_elements, monkeypatch, way) -> None:
    monkeypatch.setattr(vocab_loss, "_CHUNK_ELEMENTS", chunk_elements)
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(10, 50, generator=g) * 4).to(dtype)
    labels = torch.randint(0, 50, (10,), generator=g)
    labels[:4] = logits[:4].float().argmax(-1)  # some right, some wrong
    logits.requires_grad_()
    loss, correct = summed_cross_entropy(logits, labels)
    loss.mul(0.7).backward()  # a scale on the way back, as the mean over a batch gives
    ref_logits = logits.detach().float().requires_grad_()
    ref = F.cross_entropy(ref_logits, labels, reduction="sum")
    ref.mul(0.7).backward()
    assert loss.dtype == torch.float32 and logits.grad.dtype == dtype
    torch.testing.assert_close(loss, ref, atol=1e-4, rtol=1e-5)
    tolerance = {"atol": 1e-6, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 4e-3, "rtol": 1e-2}
    torch.testing.assert_close(logits.grad.float(), ref_logits.grad, **tolerance)
    assert torch.equal(correct, ref_logits.argmax(-1) == labels) and 4 <= int(correct.sum()) < 10
    assert not correct.requires_grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_summed_cross_entropy_adds_a_bias_left_out_of_the_logits(dtype, monkeypatch, way) -> None:
    """With `bias`, the value, both gradients and the accuracy are those of `logits + bias`."""
    monkeypatch.setattr(vocab_loss, "_CHUNK_ELEMENTS", 3 * 50)  # three rows per chunk, a ragged end
    g = torch.Generator().manual_seed(1)
    logits = (torch.randn(10, 50, generator=g) * 4).to(dtype).requires_grad_()
    bias = (torch.randn(50, generator=g) * 2).requires_grad_()
    labels = torch.randint(0, 50, (10,), generator=g)
    loss, correct = summed_cross_entropy(logits, labels, bias)
    loss.mul(0.7).backward()
    ref_logits, ref_bias = logits.detach().float().requires_grad_(), bias.detach().clone().requires_grad_()
    biased = ref_logits + ref_bias
    F.cross_entropy(biased, labels, reduction="sum").mul(0.7).backward()
    torch.testing.assert_close(loss, F.cross_entropy(biased.detach(), labels, reduction="sum"), atol=1e-4, rtol=1e-5)
    tolerance = {"atol": 1e-6, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 4e-3, "rtol": 1e-2}
    torch.testing.assert_close(logits.grad.float(), ref_logits.grad, **tolerance)
    torch.testing.assert_close(bias.grad, ref_bias.grad, **bias_tolerance(dtype, way))
    assert bias.grad.dtype == torch.float32 and logits.grad.dtype == dtype
    assert torch.equal(correct, biased.detach().argmax(-1) == labels)
    with pytest.raises(ValueError, match=r"bias must be \[V\] = \[50\]"):
        summed_cross_entropy(logits, labels, bias[:49])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("outer", [1.0, 0.7])  # the loss backpropagated as it is (nothing left to scale), or scaled
def test_summed_cross_entropy_weighs_the_value_and_the_gradients_it_makes(dtype, outer, monkeypatch, way) -> None:
    """`weight` (the 1/count of a mean): value, both gradients and accuracy are those of weight × the sum, whether
    the backward receives a gradient of exactly 1 (and passes the forward's gradient on) or another."""
    monkeypatch.setattr(vocab_loss, "_CHUNK_ELEMENTS", 3 * 50)
    g = torch.Generator().manual_seed(2)
    logits = (torch.randn(10, 50, generator=g) * 4).to(dtype).requires_grad_()
    bias = (torch.randn(50, generator=g) * 2).requires_grad_()
    labels = torch.randint(0, 50, (10,), generator=g)
    loss, correct = summed_cross_entropy(logits, labels, bias, weight=1 / 7)
    (loss if outer == 1.0 else loss * outer).backward()
    ref_logits, ref_bias = logits.detach().float().requires_grad_(), bias.detach().clone().requires_grad_()
    biased = ref_logits + ref_bias
    ref = F.cross_entropy(biased, labels, reduction="sum") / 7
    (ref * outer).backward()
    torch.testing.assert_close(loss, ref.detach(), atol=1e-5, rtol=1e-5)
    tolerance = {"atol": 1e-6, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 1e-3, "rtol": 1e-2}
    torch.testing.assert_close(logits.grad.float(), ref_logits.grad, **tolerance)
    torch.testing.assert_close(bias.grad, ref_bias.grad, **bias_tolerance(dtype, way))
    assert torch.equal(correct, biased.detach().argmax(-1) == labels)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("outer", [1.0, 0.7])
def test_summed_cross_entropy_ignores_rows_labelled_ignore_index(dtype, outer, monkeypatch, way) -> None:
    """Rows labelled -100 (a whole chunk of them, and some beside labelled rows) add no loss, get a zero gradient
    and are never correct, even where the logits' argmax is row 0's label: torch's ignore_index."""
    monkeypatch.setattr(vocab_loss, "_CHUNK_ELEMENTS", 3 * 50)  # three rows per chunk
    g = torch.Generator().manual_seed(3)
    logits = (torch.randn(11, 50, generator=g) * 4).to(dtype)
    logits[:, 0] += 20  # label 0 at the top of every row: an ignored row read as label 0 would count correct
    logits.requires_grad_()
    bias = (torch.randn(50, generator=g) * 2).requires_grad_()
    labels = torch.randint(0, 50, (11,), generator=g)
    labels[[0, 4]] = 0
    labels[[1, 6, 7, 8, 10]] = -100
    loss, correct = summed_cross_entropy(logits, labels, bias, weight=1 / 6)
    (loss if outer == 1.0 else loss * outer).backward()
    ref_logits, ref_bias = logits.detach().float().requires_grad_(), bias.detach().clone().requires_grad_()
    ref = F.cross_entropy(ref_logits + ref_bias, labels, reduction="sum", ignore_index=-100) / 6
    (ref * outer).backward()
    torch.testing.assert_close(loss, ref.detach(), atol=1e-5, rtol=1e-5)
    tolerance = {"atol": 1e-6, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 1e-3, "rtol": 1e-2}
    torch.testing.assert_close(logits.grad.float(), ref_logits.grad, **tolerance)
    torch.testing.assert_close(bias.grad, ref_bias.grad, **bias_tolerance(dtype, way))
    assert not logits.grad[labels == -100].any()
    assert correct.tolist() == [True, False, False, False, True, False, False, False, False, False, False]


def test_summed_cross_entropy_of_rows_all_ignored_is_zero_with_a_zero_gradient(way) -> None:
    logits = torch.randn(4, 30).requires_grad_()
    loss, correct = summed_cross_entropy(logits, torch.full((4,), -100), weight=0.25)
    loss.backward()
    assert float(loss.detach()) == 0.0 and not correct.any() and not logits.grad.any()


def test_summed_cross_entropy_of_a_label_fp32_cannot_hold_the_probability_of(way) -> None:
    """exp(-200) underflows fp32: such rows take the log-softmax, so the loss stays finite and exact."""
    logits = torch.zeros(3, 40)
    logits[:, 5] = 200.0
    labels = torch.tensor([0, 5, 39])
    logits.requires_grad_()
    loss, correct = summed_cross_entropy(logits, labels)
    loss.backward()
    ref_logits = logits.detach().requires_grad_()
    ref = F.cross_entropy(ref_logits, labels, reduction="sum")
    ref.backward()
    assert torch.isfinite(loss) and float(loss.detach()) > 399
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(logits.grad, ref_logits.grad)
    assert correct.tolist() == [False, True, False]


def test_summed_cross_entropy_breaks_ties_at_the_top_as_argmax_does(way) -> None:
    """bf16 logits often tie at the top: the label counts as predicted only where it is the first of the tied."""
    logits = torch.zeros(4, 6, dtype=torch.bfloat16)
    logits[:, 2] = logits[:, 4] = 3.0  # a tie between words 2 and 4 in every row
    labels = torch.tensor([2, 4, 0, 3])
    _, correct = summed_cross_entropy(logits, labels)
    assert correct.tolist() == [True, False, False, False]
    assert torch.equal(correct, logits.float().argmax(-1) == labels)


def test_the_vocabulary_loss_chunks_rows_on_a_cpu_only() -> None:
    cpu, elsewhere = torch.empty(100, 30522), torch.empty(100, 30522, device="meta")
    assert len(vocab_loss._row_chunks(cpu)) == 6  # 17 rows of 30,522 fit in 2^19 elements
    assert vocab_loss._row_chunks(elsewhere) == [slice(0, 100)]


def test_summed_cross_entropy_without_gradients_is_the_evaluation_path(way) -> None:
    logits, labels = torch.randn(7, 30).requires_grad_(), torch.randint(0, 30, (7,))
    with torch.no_grad():
        loss, correct = summed_cross_entropy(logits, labels)
    torch.testing.assert_close(loss, F.cross_entropy(logits, labels, reduction="sum"))
    assert torch.equal(correct, logits.argmax(-1) == labels) and loss.grad_fn is None


def _softmax_input_dtypes(scores: torch.Tensor) -> tuple[torch.Tensor, list[torch.dtype]]:
    """attention._softmax_last(scores), and the dtype each aten softmax inside it ran in."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Record(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.dtypes = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.aten._softmax.default:
                self.dtypes.append(args[0].dtype)
            return func(*args, **(kwargs or {}))

    with Record() as record:
        probs = attention._softmax_last(scores)
    return probs, record.dtypes


@pytest.mark.parametrize("keys", [20, 31, 48, 127])
def test_bf16_softmax_of_ragged_rows_goes_through_fp32_and_rounds_once(keys):
    # torch's bf16 kernel is several times slower on rows that end well past a multiple of 32; those rows go
    # through fp32: exactly fp32's softmax rounded to bf16, gradients too.
    scores = (3 * torch.randn(24, 7, keys)).bfloat16().requires_grad_()
    probs, dtypes = _softmax_input_dtypes(scores)
    assert dtypes == [torch.float32] and probs.dtype == torch.bfloat16
    assert torch.equal(probs, scores.detach().float().softmax(-1).bfloat16())
    upstream = torch.linspace(0, 1, keys).expand(24, 7, keys)
    probs.backward(upstream.bfloat16())
    scores32 = scores.detach().float().requires_grad_()
    scores32.softmax(-1).backward(upstream)
    torch.testing.assert_close(scores.grad.float(), scores32.grad, atol=1e-2, rtol=1e-2)


@pytest.mark.parametrize("keys", [8, 32, 64, 128])
def test_bf16_softmax_of_aligned_rows_keeps_torchs_bf16_kernel(keys):
    scores = (3 * torch.randn(24, 7, keys)).bfloat16()
    probs, dtypes = _softmax_input_dtypes(scores)
    assert dtypes == [torch.bfloat16] and torch.equal(probs, scores.softmax(-1))


def test_the_vocabulary_loss_takes_the_chunked_way_once_torch_compile_fails(monkeypatch) -> None:
    """Without a C++ compiler (say) the compiled kernels fail: one warning naming why, the same results the
    chunked way, and no second try in the process."""
    def no_compiler(kernel):
        def fail(*args):
            raise RuntimeError("InductorError: no C++ compiler found\nthe rest of torch's message")
        return fail

    monkeypatch.setattr(compiled, "_compiled", no_compiler)
    monkeypatch.setattr(compiled, "UNAVAILABLE", [])
    logits, labels = torch.randn(7, 30).requires_grad_(), torch.randint(0, 30, (7,))
    with pytest.warns(UserWarning, match=r"torch.compile fails here \(InductorError: no C\+\+ compiler found\), so "
                                         r"the vocabulary loss and dropout run their slower eager ways .*; a C\+\+ "
                                         r"compiler .* gives the faster ones"):
        loss, correct = summed_cross_entropy(logits, labels)
    loss.backward()
    ref_logits = logits.detach().requires_grad_()
    F.cross_entropy(ref_logits, labels, reduction="sum").backward()
    torch.testing.assert_close(logits.grad, ref_logits.grad)
    assert compiled.UNAVAILABLE == ["InductorError: no C++ compiler found"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        summed_cross_entropy(logits.detach(), labels)
        assert compiled.call(torch.add, logits, 1) is None  # any kernel, e.g. dropout's backward: no second try
