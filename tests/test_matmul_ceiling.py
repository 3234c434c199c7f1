"""benchmarks/matmul_ceiling.py: the products it times are the step's own, every way of a product does the same
work, and its FLOP count is theirs."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
from torch.utils.flop_counter import FlopCounterMode

from bertforge.config import BertConfig

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"
SPEC = importlib.util.spec_from_file_location("matmul_ceiling", BENCHMARKS / "matmul_ceiling.py")
ceiling = importlib.util.module_from_spec(SPEC)
sys.modules["matmul_ceiling"] = ceiling  # its dataclass looks its module up
SPEC.loader.exec_module(ceiling)

# Odd, distinct sizes, so a swapped dimension or a dropped factor changes the count.
SMALL = BertConfig(vocab_size=50, hidden_size=12, num_layers=3, num_heads=2, intermediate_size=20)


def counted(call) -> int:
    with FlopCounterMode(display=False) as counter:
        call()
    return counter.get_total_flops()


@pytest.mark.parametrize("training, head_rows", [(False, 0), (True, 0), (True, 7)])
def test_every_way_of_a_product_counts_the_same_and_the_total_is_case_flops(training, head_rows):
    case = ceiling.Case("small", SMALL, batch=3, length=5, training=training, head_rows=head_rows)
    total = 0
    for ways in ceiling.products(case):
        flops = {counted(way) for way in ways}
        assert len(flops) == 1, f"the ways of one product do different work: {flops}"
        total += flops.pop()
    assert total == ceiling.case_flops(case)


def test_the_benchmark_cases_are_the_benchmarks_shapes():
    """mini and base pre-training at 32 x 128 with 640 projection rows (15% masked, padded to 64); the others
    without a vocabulary projection."""
    cases = {case.name: case for case in ceiling.cases()}
    pre = [case for case in cases.values() if case.name.startswith("pre-training")]
    assert [(c.config.hidden_size, c.batch, c.length, c.head_rows) for c in pre] == [(256, 32, 128, 640),
                                                                                     (768, 32, 128, 640)]
    assert all(case.head_rows == 0 for case in cases.values() if case not in pre)
