"""Learning-rate schedules against `transformers`' schedulers, step by step, and the optimizer's decay groups."""

from __future__ import annotations

import pytest
import torch

from bertforge.training.optim import build_adamw, build_schedule, parameter_groups

transformers = pytest.importorskip("transformers")

PEAK = 1e-3


def _optimizer() -> torch.optim.Optimizer:
    return torch.optim.AdamW([torch.nn.Parameter(torch.zeros(3))], lr=PEAK)


def _learning_rates(schedule: torch.optim.lr_scheduler.LRScheduler, steps: int) -> list[float]:
    """The rate each optimizer step trains at: read, then step the schedule, as the training loops do."""
    rates = []
    for _ in range(steps):
        rates.append(schedule.get_last_lr()[0])
        schedule.optimizer.step()
        schedule.step()
    return rates


# (bertforge schedule and options, the transformers scheduler that must give the same rates, its options).
# `end_factor` is a share of the peak rate; transformers' polynomial takes an absolute `lr_end` instead.
CASES = [
    ("linear", {}, "get_linear_schedule_with_warmup", {}),
    ("cosine", {}, "get_cosine_schedule_with_warmup", {}),
    ("cosine", {"end_factor": 0.1}, "get_cosine_with_min_lr_schedule_with_warmup", {"min_lr_rate": 0.1}),
    ("cosine_with_restarts", {"num_cycles": 3}, "get_cosine_with_hard_restarts_schedule_with_warmup",
     {"num_cycles": 3}),
    ("polynomial", {"power": 2.0, "end_factor": 0.1}, "get_polynomial_decay_schedule_with_warmup",
     {"power": 2.0, "lr_end": 0.1 * PEAK}),
    ("polynomial", {"end_factor": 1e-7 / PEAK}, "get_polynomial_decay_schedule_with_warmup", {}),  # its lr_end 1e-7
    ("constant_with_warmup", {}, "get_constant_schedule_with_warmup", {}),
]


@pytest.mark.parametrize(("warmup", "total"), [(5, 23), (0, 7), (1, 4), (10, 100)])
@pytest.mark.parametrize(("name", "ours_kwargs", "theirs_name", "theirs_kwargs"), CASES,
                         ids=[f"{c[0]}-{c[2]}{'-' + str(c[1]) if c[1] else ''}" for c in CASES])
def test_schedule_matches_transformers_step_by_step(name, ours_kwargs, theirs_name, theirs_kwargs, warmup, total):
    ours = build_schedule(_optimizer(), name, warmup_steps=warmup, total_steps=total, **ours_kwargs)
    maker = getattr(transformers, theirs_name)
    if theirs_name == "get_constant_schedule_with_warmup":
        theirs = maker(_optimizer(), warmup, **theirs_kwargs)
    else:
        theirs = maker(_optimizer(), warmup, total, **theirs_kwargs)
    # Past the last step transformers' cosine rises again (progress > 1); bertforge holds the end value. A loop
    # that stops at `total` never trains there, so the comparison runs a few steps beyond the end elsewhere only.
    steps = total + 1 if name == "cosine" else total + 4
    mine, reference = _learning_rates(ours, steps), _learning_rates(theirs, steps)
    assert mine == pytest.approx(reference, rel=1e-12, abs=1e-18)
    if warmup:  # the warmup starts at 0 and reaches the peak right after its last step
        assert mine[0] == 0.0 and mine[warmup] == pytest.approx(PEAK)


def test_constant_matches_transformers():
    ours = build_schedule(_optimizer(), "constant", warmup_steps=3, total_steps=10)
    theirs = transformers.get_constant_schedule(_optimizer())
    assert _learning_rates(ours, 12) == _learning_rates(theirs, 12) == [PEAK] * 12


def test_unknown_schedule_names_the_choices():
    with pytest.raises(ValueError, match="unknown schedule 'cosin'; choose one of linear, cosine"):
        build_schedule(_optimizer(), "cosin", warmup_steps=1, total_steps=10)


def test_biases_and_layer_norms_take_no_weight_decay():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
    model.register_module("norm", torch.nn.LayerNorm(3))
    decay, no_decay = parameter_groups(model, 0.1)
    assert [p.shape for p in decay["params"]] == [torch.Size([3, 4])] and decay["weight_decay"] == 0.1
    assert len(no_decay["params"]) == 5 and no_decay["weight_decay"] == 0.0


def test_adamw_is_fused_on_a_cpu_as_the_trainers_default() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    optimizer = build_adamw(model, lr=1e-3)
    assert optimizer.defaults["fused"] is True
    loss = model(torch.randn(2, 4)).square().sum()
    loss.backward()
    before = [p.detach().clone() for p in model.parameters()]
    optimizer.step()
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
