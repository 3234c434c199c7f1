"""The budget recipe's pieces: packed rows (document edges, attention inside each window), masking
statistics under packing, bf16 training on CPU exported to transformers, bit-exact resume, and a step plan
that fits the wall-clock budget."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from bertforge.config import BertConfig
from bertforge.data.masking import MaskingSettings, mask_tokens, replacement_vocabulary
from bertforge.data.pretraining import (
    ExampleSettings,
    ExampleStream,
    Shard,
    build_packed_rows,
    collate_packed,
    document_of,
)
from bertforge.data.shards import PreparedCorpus, prepare_corpus
from bertforge.heads import BertForPreTraining
from bertforge.tokenizer import BertTokenizer
from bertforge.training.pretrain import PretrainConfig, plan_steps, train

TINY = {"hidden_size": 36, "num_layers": 2, "num_heads": 3, "intermediate_size": 52}
CLS, SEP, PAD = 2, 3, 0


def _shard(document_lengths: list[int], sentence_length: int = 7) -> Shard:
    """A synthetic shard whose token ids name their document (ids 10 + d), sentences of 7 tokens."""
    tokens, sentences, documents, offset = [], [0], [0], 0
    for d, length in enumerate(document_lengths):
        tokens += [10 + d] * length
        sentences += [offset + cut for cut in range(sentence_length, length, sentence_length)] + [offset + length]
        documents.append(len(sentences) - 1)
        offset += length
    return Shard(np.asarray(tokens, dtype=np.int32), np.asarray(sentences, dtype=np.int64),
                 np.asarray(documents, dtype=np.int64))


def test_packed_rows_keep_every_token_once_and_windows_inside_their_document():
    lengths = [3, 250, 40, 1, 126, 17, 90, 5, 300, 2] * 20
    shard = _shard(lengths)
    rows = build_packed_rows(shard, random.Random(0), max_seq_length=64)
    pairs = rows.reshape(len(rows), -1, 2)
    used = pairs[pairs[..., 0] >= 0]  # [W, 2] every window once
    covered = np.zeros(sum(lengths), dtype=int)
    for start, end in used:
        assert document_of(shard, start) == document_of(shard, end - 1)  # never across a document edge
        assert 0 < end - start <= 62
        covered[start:end] += 1
    assert (covered == 1).all()  # every token in exactly one window of this pass
    row_lengths = ((pairs[..., 1] - pairs[..., 0] + 2) * (pairs[..., 0] >= 0)).sum(-1)
    assert row_lengths.max() <= 64
    assert row_lengths.sum() / (64 * len(rows)) > 0.95  # best-fit leaves almost no padding


def test_window_cuts_move_between_passes():
    shard = _shard([500])
    first = build_packed_rows(shard, random.Random(1), 64)
    second = build_packed_rows(shard, random.Random(2), 64)
    assert not np.array_equal(np.sort(first[:, 0]), np.sort(second[:, 0]))


def test_collated_rows_restart_positions_and_number_their_windows():
    shard = _shard([5, 9, 200])
    rows = build_packed_rows(shard, random.Random(0), 32)
    batch = collate_packed([(shard, r) for r in rows], cls_id=CLS, sep_id=SEP, pad_id=PAD)
    for i in range(len(rows)):
        ids, seq, pos = batch.input_ids[i], batch.sequence_ids[i], batch.position_ids[i]
        for k in range(1, int(seq.max()) + 1):
            window = ids[seq == k]
            assert window[0] == CLS and window[-1] == SEP
            assert len(set(window[1:-1].tolist())) == 1  # one document's tokens (ids name the document)
            assert pos[seq == k].tolist() == list(range(len(window)))
        assert (ids[seq == 0] == PAD).all()
    mask = batch.model_attention_mask()
    assert mask.shape == (len(rows), batch.input_ids.shape[1], batch.input_ids.shape[1]) and mask.dtype == torch.bool


def test_a_packed_row_computes_what_its_windows_compute_alone():
    torch.manual_seed(0)
    model = BertForPreTraining(BertConfig.from_preset("tiny", vocab_size=60, **TINY), nsp=False).eval()
    windows = [torch.randint(5, 60, (n,)) for n in (9, 4, 13)]
    row = torch.cat([torch.cat([torch.tensor([CLS]), w, torch.tensor([SEP])]) for w in windows])[None]  # [1, T]
    seq = torch.cat([torch.full((len(w) + 2,), k + 1) for k, w in enumerate(windows)])[None]
    pos = torch.cat([torch.arange(len(w) + 2) for w in windows])[None]
    block = seq[:, :, None] == seq[:, None, :]
    with torch.no_grad():
        packed = model.bert(row, block, position_ids=pos).sequence_output[0]
        offset = 0
        for w in windows:
            alone = model.bert(torch.cat([torch.tensor([CLS]), w, torch.tensor([SEP])])[None]).sequence_output[0]
            assert torch.allclose(packed[offset:offset + len(alone)], alone, atol=1e-5)
            offset += len(alone)
        # Without the block mask the windows would see each other: the test can tell.
        leaky = model.bert(row, position_ids=pos).sequence_output[0]
        assert not torch.allclose(leaky[:len(windows[0]) + 2], packed[:len(windows[0]) + 2], atol=1e-3)


def test_masking_rate_and_80_10_10_hold_on_packed_rows():
    shard = _shard([37, 400, 12, 3, 250, 64, 8, 1000, 21, 5] * 8)
    rows = build_packed_rows(shard, random.Random(0), 128)
    batch = collate_packed([(shard, r) for r in rows], cls_id=CLS, sep_id=SEP, pad_id=PAD)
    settings = MaskingSettings(rate=0.3, max_predictions=39)
    vocab = replacement_vocabulary(200, {0, 1, 2, 3, 4})
    masked = mask_tokens(batch.input_ids, batch.special_tokens_mask, mask_id=4, replacement_ids=vocab,
                         settings=settings, generator=torch.Generator().manual_seed(0))
    selected = masked.masked_positions
    assert not (selected & batch.special_tokens_mask).any()  # never [CLS], [SEP] or padding
    rate = selected.sum() / (~batch.special_tokens_mask).sum()
    assert abs(float(rate) - 0.3) < 0.01
    n = int(selected.sum())
    to_mask = int((masked.input_ids[selected] == 4).sum()) / n
    kept = int((masked.input_ids[selected] == batch.input_ids[selected]).sum()) / n
    assert abs(to_mask - 0.8) < 0.02 and abs(kept - 0.1 - 1 / 195 * 0.1) < 0.02  # random may hit the same id


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    from pydoc_data.topics import topics

    root = tmp_path_factory.mktemp("budget")
    text = root / "docs.txt"
    docs = [topics[key] for key in sorted(topics)[:60]]
    text.write_text("\n\n".join("\n".join(line for line in doc.splitlines() if line.strip()) for doc in docs))
    tokenizer = BertTokenizer.train([text], vocab_size=400)
    prepare_corpus([text], root / "data", tokenizer, heldout_every=10, progress=False)
    return root / "data"


def _budget(corpus: Path, out: Path, **changes) -> PretrainConfig:
    values = dict(data=corpus, output_dir=out, recipe="budget", preset="tiny", model_overrides=TINY,
                  max_length=48, batch_size=8, steps=10, learning_rate=3e-3, eval_batches=2, log_every=2, save_every=4,
                  progress=False, tensorboard=False, seed=3, precision="bf16")
    values.update(changes)
    return PretrainConfig.from_options(**values)


def test_the_budget_recipe_fills_its_options_and_explicit_values_win(corpus, tmp_path):
    cfg = _budget(corpus, tmp_path, learning_rate=None, precision=None, warmup_steps=3)
    assert (cfg.corpus.objective, cfg.corpus.packing, cfg.corpus.masking_rate, cfg.model.dropout) == \
        ("mlm", True, 0.3, 0.0)
    assert cfg.optim.learning_rate == 1e-3  # by width: this model is narrow
    for preset, overrides, lr in (("mini", {}, 1e-3), ("small", {}, 5e-4), ("mini", {"hidden_size": 512}, 5e-4),
                                  ("base", {}, 5e-4)):
        wide = _budget(corpus, tmp_path, learning_rate=None, preset=preset, model_overrides=overrides)
        assert wide.optim.learning_rate == lr, (preset, overrides)
    assert _budget(corpus, tmp_path, preset="small").optim.learning_rate == 3e-3  # given, so it wins
    assert cfg.corpus.max_predictions == 15 and cfg.optim.precision == "auto"  # ceil(0.3 x 48)
    cfg.plan(100)
    assert cfg.optim.warmup_steps == 3  # given, so the recipe's warmup_ratio does not apply
    bert = PretrainConfig.from_options(data=corpus, output_dir=tmp_path)
    assert (bert.corpus.objective, bert.corpus.packing, bert.corpus.masking_rate, bert.corpus.max_predictions) == \
        ("mlm_nsp", False, 0.15, 20)
    with pytest.raises(ValueError, match="packing"):
        PretrainConfig.from_options(data=corpus, output_dir=tmp_path, objective="mlm_nsp", packing=True)
    with pytest.raises(ValueError, match="masking-rate"):
        PretrainConfig.from_options(data=corpus, output_dir=tmp_path, masking_rate=2)


def test_bf16_packed_run_learns_and_saves_fp32_weights_transformers_loads(corpus, tmp_path):
    transformers = pytest.importorskip("transformers")
    result = train(_budget(corpus, tmp_path / "run", steps=30, eval_every=30))
    first, last = result.evaluations[0], result.evaluations[30]
    assert last["mlm_loss"] < first["mlm_loss"] - 0.4
    assert 0 <= last["mlm_mask_accuracy"] <= 1 and last["mlm_accuracy"] >= 0
    from safetensors.torch import load_file

    weights = load_file(str(result.model_dir / "model.safetensors"))
    assert all(t.dtype == torch.float32 for t in weights.values())
    tokenizer = BertTokenizer.from_pretrained(result.model_dir)
    tensors = tokenizer.encode(["The for statement iterates over a [MASK]."], padding="longest").tensors()
    ours = BertForPreTraining(BertConfig.from_preset("tiny", vocab_size=tokenizer.vocab_size, **TINY,
                                                     max_position_embeddings=512), nsp=False)
    from bertforge.checkpoint import load_hf_state_dict

    load_hf_state_dict(ours, weights)
    with torch.no_grad():
        mine = ours.eval()(**tensors).mlm_logits
        for cls in (transformers.BertForMaskedLM, transformers.BertForPreTraining):
            theirs = cls.from_pretrained(result.model_dir).eval()
            logits = theirs(**tensors).logits if cls is transformers.BertForMaskedLM else \
                theirs(**tensors).prediction_logits
            assert torch.allclose(mine, logits, atol=1e-4)


def test_resume_with_the_recipe_repeats_the_run_bit_for_bit(corpus, tmp_path):
    whole = train(_budget(corpus, tmp_path / "whole"))
    crashed = train(_budget(corpus, tmp_path / "crash"), stop_after=6)  # last checkpoint: step 4
    assert crashed.stopped == "stop_after"
    resumed = train(_budget(corpus, tmp_path / "crash", resume=True))
    assert sorted(resumed.losses) == list(range(5, 11))
    assert all(resumed.losses[s] == whole.losses[s] for s in range(5, 11))
    from safetensors.torch import load_file

    a = load_file(str(whole.model_dir / "model.safetensors"))
    b = load_file(str(resumed.model_dir / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_plan_fits_the_budget_and_a_resumed_run_keeps_it(corpus, tmp_path):
    cfg = _budget(corpus, tmp_path, steps=None, max_minutes=1.0)
    assert plan_steps(cfg, step_seconds=0.5, eval_seconds=1.0, spent_seconds=2.0) == int((60 * 0.97 - 2 - 10) / 0.5)
    planned = train(_budget(corpus, tmp_path / "plan", steps=None, max_minutes=0.15, save_every=1), stop_after=3)
    steps = planned.output_dir.joinpath("config.json").read_text()
    import json

    total = json.loads(steps)["steps"]
    assert total >= 10
    resumed = train(_budget(corpus, tmp_path / "plan", steps=None, max_minutes=10, resume=True))
    assert resumed.step == total and resumed.stopped == "finished"


def test_a_plan_from_a_wrong_probe_is_fitted_again_from_the_runs_own_steps(corpus, tmp_path, monkeypatch, capsys):
    import json

    import bertforge.training.pretrain as pretrain

    # The probe before the run claims 2 ms a step: far faster than the real ones, so the first plan is too long
    # for the budget and would be cut by the timer before its learning rate decays.
    monkeypatch.setattr(pretrain, "measure_step_seconds", lambda *args, **kwargs: 0.002)
    result = train(_budget(corpus, tmp_path / "run", steps=None, max_minutes=0.25, save_every=None, log_every=1))
    printed = capsys.readouterr().out
    first = int(printed.split("planned ")[1].split(" steps")[0].replace(",", ""))
    assert "re-planned" in printed
    final = json.loads((tmp_path / "run" / "config.json").read_text())["steps"]
    assert final < first
    checkpoint = torch.load(sorted((tmp_path / "run" / "checkpoints").glob("*.pt"))[-1], weights_only=False)
    assert checkpoint["config"]["steps"] == final  # a resumed run continues on the fitted plan
    if result.stopped == "finished":  # the usual case; a very slow machine may still meet the timer first
        assert result.step == final
        rates = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
        assert [r["lr"] for r in rates if r.get("split") == "train"][-1] == pytest.approx(0.0, abs=1e-9)


def test_fitting_again_continues_the_schedule_at_the_current_step(corpus, tmp_path):
    import json
    import time
    from types import SimpleNamespace

    from bertforge.training.distributed import World
    from bertforge.training.optim import lr_multiplier
    from bertforge.training.pretrain import _Replan, _schedule

    cfg = _budget(corpus, tmp_path, steps=None, max_minutes=1.0, save_every=None)
    cfg.plan(1000)
    (tmp_path / "config.json").write_text("{}")
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.optim.learning_rate)
    trainer = SimpleNamespace(world=World(), optimizer=optimizer, scheduler=_schedule(cfg, optimizer))
    replan = _Replan.for_run(cfg, started=time.monotonic() - 10.0, eval_seconds=0.0)
    assert replan.at == (50, 200)  # 5% and 20% of the plan, both before the first checkpoint (step 250)
    replan.step_seconds = [9.0] * 12 + [0.5] * 38  # a slow start, then 0.5 s a step
    replan.fit(cfg, trainer, step=50)
    expected = 50 + int((60 * 0.97 - 10.0) / 0.5)
    assert abs(cfg.optim.steps - expected) <= 1 and cfg.optim.warmup_steps == round(0.06 * cfg.optim.steps)
    factor = lr_multiplier("linear", warmup_steps=cfg.optim.warmup_steps, total_steps=cfg.optim.steps)(50)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(cfg.optim.learning_rate * factor)
    assert json.loads((tmp_path / "config.json").read_text())["steps"] == cfg.optim.steps

    # The second fit reads the steps since the first quarter of its sample: here faster than the first fit saw.
    replan.step_seconds += [0.4] * 150
    replan.started -= 20.0  # 30 s of the minute spent
    replan.fit(cfg, trainer, step=200)
    expected = 200 + int((60 * 0.97 - 30.0) / 0.4)
    assert abs(cfg.optim.steps - expected) <= 1
    factor = lr_multiplier("linear", warmup_steps=cfg.optim.warmup_steps, total_steps=cfg.optim.steps)(200)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(cfg.optim.learning_rate * factor)


def test_eval_set_is_the_same_whatever_the_training_recipe(corpus, tmp_path):
    from bertforge.training.pretrain import heldout_batches

    prepared = PreparedCorpus.open(corpus)
    tokenizer = prepared.tokenizer()
    a = heldout_batches(prepared, _budget(corpus, tmp_path, masking_rate=0.4, batch_size=4), tokenizer)
    b = heldout_batches(prepared, PretrainConfig.from_options(data=corpus, output_dir=tmp_path, max_length=48,
                                                 eval_batches=2), tokenizer)
    assert len(a.mlm) == len(b.mlm) and not a.nsp and b.nsp
    for (_, masked_a), (_, masked_b) in zip(a.mlm, b.mlm, strict=True):
        assert torch.equal(masked_a.input_ids, masked_b.input_ids) and torch.equal(masked_a.labels, masked_b.labels)
    rate = sum(int(m.masked_positions.sum()) for _, m in a.mlm) / sum(int((~x.special_tokens_mask).sum())
                                                                      for x, _ in a.mlm)
    assert abs(rate - 0.15) < 0.02


def test_example_stream_yields_packed_rows(corpus):
    prepared = PreparedCorpus.open(corpus)
    settings = ExampleSettings(48, nsp=False, packed=True)
    stream = ExampleStream(list(prepared.shards("train")), settings, seed=0)
    rows = stream.take(20)
    assert all(record.shape == (2 * (48 // 3),) for _, record in rows)
    with pytest.raises(ValueError, match="packing needs the mlm objective"):
        ExampleSettings(48, nsp=True, packed=True)


def _run_job(corpus: Path, out: Path, **changes) -> Path:
    """`bertforge pretrain` as the command line calls it (flat options gathered into their groups)."""
    from bertforge.cli import call_job
    from bertforge.training import pretrain

    values = dict(data=corpus, output_dir=out, recipe="budget", preset="tiny", model_overrides=TINY, max_length=48,
                  batch_size=8, steps=40, pair_phase=0.25, learning_rate=3e-3, eval_batches=2, log_every=2,
                  save_every=5, progress=False, tensorboard=False, seed=3, precision="bf16")
    return call_job(pretrain.run, {**values, **changes})


def _heldout(run: Path, step: int) -> dict:
    import json

    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return next(r for r in lines if r["split"] == "heldout" and r["step"] == step)


def test_a_pair_phase_continues_the_mlm_phase_on_sentence_pairs_and_resumes(corpus, tmp_path):
    import json

    from safetensors.torch import load_file

    out = tmp_path / "run"
    _run_job(corpus, out)
    first, second = (json.loads((folder / "config.json").read_text()) for folder in (out / "phase1", out))
    assert (first["objective"], first["packing"], first["steps"], first["learning_rate"]) == ("mlm", True, 30, 3e-3)
    assert (second["objective"], second["packing"], second["steps"], second["learning_rate"]) == \
        ("mlm_nsp", False, 10, 1.5e-3)
    assert second["init_from"] == str(out / "phase1" / "model") and second["pair_phase"] == 0.0
    # The second phase starts from the first one's weights, not from an untrained model.
    assert _heldout(out, 0)["mlm_loss"] < _heldout(out / "phase1", 0)["mlm_loss"] - 0.3
    assert _heldout(out, 0)["mlm_loss"] == pytest.approx(_heldout(out / "phase1", 30)["mlm_loss"], abs=0.05)
    final = load_file(str(out / "model" / "model.safetensors"))
    assert "cls.seq_relationship.weight" in final  # the NSP head the second phase trained
    # Resumed after both finished: the first phase is not run again, the final model stays as it was.
    stamps = {p: p.stat().st_mtime_ns for p in (out / "phase1").rglob("*") if p.is_file()}
    _run_job(corpus, out, resume=True)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    again = load_file(str(out / "model" / "model.safetensors"))
    assert all(torch.equal(final[k], again[k]) for k in final)


def test_a_pair_phase_needs_an_mlm_phase_and_a_share_below_one(corpus, tmp_path):
    from bertforge.errors import OptionError

    with pytest.raises(OptionError, match="follows a masked-LM phase, and this run's objective is mlm_nsp"):
        _run_job(corpus, tmp_path / "a", recipe="bert")
    with pytest.raises(OptionError, match="--pair-phase 1.0: must be 0 <= value < 1"):
        _run_job(corpus, tmp_path / "b", pair_phase=1.0)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
