"""Learning-rate schedules against `transformers`' schedulers, step by step, and the optimizer's decay groups."""

from __future__ import annotations

import pytest
import torch

from bertforge.training.optim import build_adamw, build_schedule, clip_gradients, parameter_groups

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


@pytest.mark.parametrize("scale", [1e-3, 0.9999995, 1.0, 50.0, float("nan")])
def test_clip_gradients_matches_torch_bit_for_bit_and_skips_a_factor_of_one(scale: float, monkeypatch) -> None:
    g = torch.Generator().manual_seed(0)
    shapes = [(7, 5), (5,), (3, 3, 2)]
    raw = [torch.randn(s, generator=g) for s in shapes]
    total = torch.linalg.vector_norm(torch.cat([r.flatten() for r in raw]))
    grads = [r / total * scale for r in raw]  # total norm = scale (bound 1.0)
    ours, theirs = ([torch.zeros(s, requires_grad=True) for s in shapes] for _ in range(2))
    for p, q, grad in zip(ours, theirs, grads, strict=True):
        p.grad, q.grad = grad.clone(), grad.clone()
    calls = []
    real = torch.nn.utils.clip_grads_with_norm_
    monkeypatch.setattr(torch.nn.utils, "clip_grads_with_norm_", lambda *a: calls.append(a) or real(*a))
    norm = clip_gradients(ours, 1.0)
    expected = torch.nn.utils.clip_grad_norm_(theirs, 1.0)
    torch.testing.assert_close(norm, expected, equal_nan=True, rtol=0, atol=0)
    for p, q in zip(ours, theirs, strict=True):
        assert torch.equal(p.grad, q.grad) or (p.grad.isnan().all() and q.grad.isnan().all())
    assert len(calls) == (0 if scale <= 1.0 - 1e-6 else 1)  # 0.9999995 + 1e-6 > 1: torch scales it, so do we


def _tiny_classifier(seed: int):
    from bertforge.config import BertConfig
    from bertforge.heads import BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=40, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32,
                        max_position_embeddings=16, hidden_dropout=0.0, attention_dropout=0.0)
    return BertForSequenceClassification(config, num_labels=2)


@pytest.mark.parametrize("track_rows", [False, True])
def test_lookup_gradients_train_as_dense_gradients_do_in_one_buffer_that_persists(track_rows: bool) -> None:
    """Three AdamW steps (each on other tokens, with duplicates in a batch) with the tables' gradients kept in
    one buffer, and with torch's default dense gradients: the same weights and gradient norms; the buffer is
    never reallocated, and holds nothing but zeros after zero() (with track_rows: only the rows looked up are
    cleared, so a stale row would show); close() restores."""
    from bertforge.training.optim import LookupGradients

    batches = [torch.tensor([[2, 7, 7, 9, 3], [2, 11, 7, 3, 0]]), torch.tensor([[2, 5, 3, 0, 0], [2, 13, 14, 3, 0]]),
               torch.tensor([[2, 7, 30, 31, 3], [2, 9, 3, 0, 0]])]
    labels = torch.tensor([0, 1])
    models = [_tiny_classifier(0), _tiny_classifier(0)]
    optimizers = [build_adamw(m, lr=1e-2) for m in models]
    lookup = LookupGradients(models[0], track_rows=track_rows)
    table = models[0].bert.embeddings.word_embeddings
    buffer = table.weight.grad.data_ptr()
    for ids in batches:
        norms = []
        for model, optimizer, kept in zip(models, optimizers, (True, False), strict=True):
            lookup.zero(optimizer) if kept else optimizer.zero_grad(set_to_none=True)
            if kept:
                assert not table.weight.grad.any()
                with torch.no_grad():  # an evaluation between steps: its lookups are not noted
                    model(ids)
                assert not lookup._looked_up
            loss = torch.nn.functional.cross_entropy(model(ids, (ids != 0).long()).logits, labels)
            loss.backward()
            norms.append(clip_gradients(model.parameters(), 1.0, lookup if kept else None))
            optimizer.step()
        torch.testing.assert_close(norms[0], norms[1], rtol=1e-6, atol=0)
        assert table.weight.grad.data_ptr() == buffer and table.weight.grad.layout == torch.strided
    for (name, ours), theirs in zip(models[0].named_parameters(), models[1].parameters(), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-7, msg=name)
    assert not torch.equal(table.weight, _tiny_classifier(0).bert.embeddings.word_embeddings.weight)
    lookup.close()
    assert not table.sparse and table.weight.grad is None
    models[0](batches[0])  # the hooks are gone with close(): nothing more is noted
    assert not lookup._looked_up


def test_lookup_gradients_count_a_tied_table_whole() -> None:
    """A word table that is also the MLM decoder (tied) gets a dense gradient besides its rows: zeroing and the
    norm then take the whole table, and training equals torch's default."""
    from bertforge.config import BertConfig
    from bertforge.heads import BertForMaskedLM
    from bertforge.training.optim import LookupGradients

    def tiny():
        torch.manual_seed(0)
        return BertForMaskedLM(BertConfig(vocab_size=40, hidden_size=16, num_layers=1, num_heads=2,
                                          intermediate_size=32, max_position_embeddings=16, hidden_dropout=0.0,
                                          attention_dropout=0.0))

    models = [tiny(), tiny()]
    optimizers = [build_adamw(m, lr=1e-2) for m in models]
    lookup = LookupGradients(models[0], track_rows=True)
    for ids in (torch.tensor([[2, 7, 9, 3]]), torch.tensor([[2, 11, 12, 3]])):
        norms = []
        for model, optimizer, kept in zip(models, optimizers, (True, False), strict=True):
            lookup.zero(optimizer) if kept else optimizer.zero_grad(set_to_none=True)
            logits = model(ids).mlm_logits  # [1, 4, V]
            torch.nn.functional.cross_entropy(logits[0], torch.tensor([5, 6, 7, 8])).backward()
            norms.append(clip_gradients(model.parameters(), 1.0, lookup if kept else None))
            optimizer.step()
        torch.testing.assert_close(norms[0], norms[1], rtol=1e-6, atol=0)
    for (name, ours), theirs in zip(models[0].named_parameters(), models[1].parameters(), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-7, msg=name)
