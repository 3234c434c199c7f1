"""bertforge's CPU dropout (model/dropout.py), both ways (16-bit lanes of drawn words; a compiled hash of each
element's index and a drawn seed): the rate, the scale, the same mask forward and backward, each lane position on
its own, seeding, and where torch's own dropout runs instead."""

from __future__ import annotations

import math

import pytest
import torch

from bertforge import compiled
from bertforge.model import dropout as dropout_module
from bertforge.model.dropout import Dropout, dropout
from bertforge.training.finetune import with_dropout


@pytest.fixture(params=["lanes", "hashed"])
def way(request, monkeypatch):
    """The lanes way below any size; the hashed (compiled) way above every size. The hashed way must not have
    fallen back."""
    monkeypatch.setattr(dropout_module, "_COMPILED_MIN_ELEMENTS", 1 << 62 if request.param == "lanes" else 1)
    yield request.param
    if request.param == "hashed":
        assert not compiled.UNAVAILABLE, f"torch.compile failed here: {compiled.UNAVAILABLE}"


def within(observed: float, p: float, n: int, sigmas: float = 5.0) -> bool:
    """observed is a fraction of n Bernoulli(p) trials: inside `sigmas` standard deviations of p."""
    return abs(observed - p) <= sigmas * math.sqrt(p * (1 - p) / n)


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5])
def test_each_element_and_each_lane_drops_at_the_rate(way, p: float) -> None:
    torch.manual_seed(0)
    n = 1 << 22
    dropped = dropout(torch.ones(n), p) == 0
    true_p = round(p * 65536) / 65536
    assert within(dropped.float().mean().item(), true_p, n)
    for lane in range(4):  # the four 16-bit lanes of each 64-bit draw (hashed: every fourth element)
        assert within(dropped.view(-1, 4)[:, lane].float().mean().item(), true_p, n // 4)
    # Neighbours are independent: both of a pair drop with probability p².
    both = (dropped[0::2] & dropped[1::2]).float().mean().item()
    assert within(both, true_p**2, n // 2)


def test_kept_elements_are_scaled_to_keep_the_expectation_exactly(way) -> None:
    torch.manual_seed(1)
    x = torch.rand(1000, 37) + 0.5
    y = dropout(x, 0.1)
    kept = y != 0
    keep_probability = (65536 - round(0.1 * 65536)) / 65536
    assert torch.equal(y[kept], x[kept] * (1 / keep_probability))
    assert 0.85 < kept.float().mean().item() < 0.95


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_backward_pass_uses_the_forward_mask(way, dtype: torch.dtype) -> None:
    torch.manual_seed(2)
    x = (torch.rand(64, 3, 17) + 0.5).to(dtype).requires_grad_()
    y = dropout(x, 0.2)
    y.sum().backward()
    scale = torch.tensor(65536 / (65536 - round(0.2 * 65536)), dtype=dtype)
    assert torch.equal(x.grad, torch.where(y != 0, scale, torch.zeros((), dtype=dtype)))
    assert y.dtype == dtype and y.shape == x.shape


def test_the_same_seed_gives_the_same_mask_and_a_new_draw_another(way) -> None:
    x = torch.ones(4099)  # not a multiple of four: the last draw is cut
    torch.manual_seed(3)
    first, second = dropout(x, 0.1), dropout(x, 0.1)
    torch.manual_seed(3)
    assert torch.equal(dropout(x, 0.1), first)
    assert not torch.equal(first, second)


def test_eval_mode_and_rate_zero_return_the_input_itself() -> None:
    x = torch.randn(5, 7)
    assert dropout(x, 0.5, training=False) is x
    assert dropout(x, 0.0) is x
    module = Dropout(0.5).eval()
    assert module(x) is x


def test_rates_that_round_to_0_or_1_and_invalid_rates_go_to_torch() -> None:
    x = torch.ones(1000)
    assert torch.equal(dropout(x, 1.0), torch.zeros(1000))
    torch.manual_seed(4)
    tiny = dropout(x, 1e-7)  # rounds to 0 lanes of 65536: torch's own Bernoulli keeps the rate
    assert tiny.shape == x.shape
    with pytest.raises(ValueError, match="dropout probability"):
        dropout(x, 1.5)


def test_the_module_is_an_nn_dropout_so_with_dropout_sets_its_rate() -> None:
    from bertforge.config import BertConfig
    from bertforge.heads import BertForSequenceClassification

    net = BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=16, num_layers=1, num_heads=2,
                                                   intermediate_size=32), num_labels=2)
    modules = [m for m in net.modules() if isinstance(m, torch.nn.Dropout)]
    assert modules and all(isinstance(m, Dropout) for m in modules)
    with_dropout(net, 0.25)
    assert all(m.p == 0.25 for m in modules)
    assert not [k for k in net.state_dict() if "dropout" in k]  # no state: checkpoints are unchanged


def test_a_transposed_input_gets_the_same_mask_forward_and_backward(way) -> None:
    torch.manual_seed(5)
    x = (torch.rand(40, 30) + 0.5).t().requires_grad_()  # not contiguous
    y = dropout(x, 0.3)
    y.backward(torch.ones_like(y))
    assert torch.equal(x.grad != 0, y != 0) and 0.6 < (y != 0).float().mean().item() < 0.8


def test_one_compiled_kernel_per_dtype_serves_every_shape_rank_rate_and_autocast_state(monkeypatch) -> None:
    """Building a kernel costs seconds at the start of a process (a 125-step fine-tuning benchmark paid 4 s for
    kernels built anew for each rank, and for the forward under autocast and its backward outside)."""
    from torch._dynamo.utils import counters

    monkeypatch.setattr(dropout_module, "_COMPILED_MIN_ELEMENTS", 1)
    dropout(torch.randn(4, 6, 8, dtype=torch.bfloat16), 0.1)  # the bf16 kernel is built now (or was before)
    built = counters["stats"]["unique_graphs"]
    assert built > 0, "torch._dynamo no longer counts the graphs it builds: this test needs another counter"
    for shape in [(3, 5), (2, 3, 4, 5), (7,)]:
        x = torch.randn(shape, dtype=torch.bfloat16, requires_grad=True)
        dropout(x, 0.1).sum().backward()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = dropout(x, 0.3)
        y.sum().backward()
    assert not compiled.UNAVAILABLE, f"torch.compile failed here: {compiled.UNAVAILABLE}"
    assert counters["stats"]["unique_graphs"] == built
