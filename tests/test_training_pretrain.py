"""The pre-training loop on a tiny model: bit-exact resume, accumulation, NaN stop, export to transformers,
LAMB against its formula, and 2-process DDP (gloo) against 1 process."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bertforge.data.shards import prepare_corpus
from bertforge.heads import CausalLMOutput, ClassifierOutput, PreTrainingOutput
from bertforge.model import BertOutput
from bertforge.tokenizer import BertTokenizer
from bertforge.training.checkpointing import latest_checkpoint, load_checkpoint
from bertforge.training.lamb import Lamb
from bertforge.training.pretrain import PretrainConfig, losses, train

TINY = {"hidden_size": 36, "num_layers": 2, "num_heads": 3, "intermediate_size": 52}


def _python_docs_corpus(path: Path, count: int = 60) -> Path:
    """Real English text every Python carries: pydoc topics, one document each."""
    from pydoc_data.topics import topics

    docs = [topics[key] for key in sorted(topics)[:count]]
    path.write_text("\n\n".join("\n".join(line for line in doc.splitlines() if line.strip()) for doc in docs))
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pretrain")
    text = _python_docs_corpus(root / "docs.txt")
    tokenizer = BertTokenizer.train([text], vocab_size=400)
    prepare_corpus([text], root / "data", tokenizer, heldout_every=10, progress=False)
    return root / "data"


def _config(corpus: Path, out: Path, **changes) -> PretrainConfig:
    values = dict(data=corpus, output_dir=out, preset="tiny", model_overrides=TINY, max_length=48, batch_size=8,
                  steps=8, learning_rate=2e-3, warmup_steps=2, eval_every=8, eval_batches=2, log_every=2, save_every=3,
                  progress=False, tensorboard=False, seed=7)
    values.update(changes)
    return PretrainConfig.from_options(**values)


def _weights(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(directory / "model" / "model.safetensors"))


def test_resume_after_a_crash_repeats_the_uninterrupted_run_bit_for_bit(corpus, tmp_path):
    whole = train(_config(corpus, tmp_path / "whole"))  # dropout 0.1 on: the RNG state must resume too
    assert whole.stopped == "finished" and sorted(whole.losses) == list(range(1, 9))

    crashed = train(_config(corpus, tmp_path / "crash"), stop_after=5)  # dies after step 5; last checkpoint: 3
    assert crashed.stopped == "stop_after"
    assert latest_checkpoint(tmp_path / "crash" / "checkpoints").name == "step-0000003.pt"
    for step in range(1, 6):
        assert crashed.losses[step] == whole.losses[step]

    resumed = train(_config(corpus, tmp_path / "crash", resume=True))
    assert sorted(resumed.losses) == [4, 5, 6, 7, 8]
    for step in range(4, 9):
        assert resumed.losses[step] == whole.losses[step]  # exactly equal, not approximately
    a, b = _weights(tmp_path / "whole"), _weights(tmp_path / "crash")
    assert all(torch.equal(a[k], b[k]) for k in a)
    # The metrics file of the resumed run has each step once.
    steps = [r["step"] for r in map(json.loads, (tmp_path / "crash" / "metrics.jsonl").read_text().splitlines())
             if r["split"] == "train"]
    assert steps == [2, 4, 6, 8]
    assert resumed.evaluations[8] == whole.evaluations[8]
    assert whole.evaluations[8]["mlm_loss"] < whole.evaluations[0]["mlm_loss"] - 0.05
    assert (tmp_path / "whole" / "curves.png").stat().st_size > 10_000


def _saved_before_the_settings_were_grouped(corpus: Path, out: Path) -> dict:
    """What config.json and each checkpoint's "config" held for `_config(corpus, out)` when the settings were
    one flat dataclass (bertforge before pretrain_settings.py): every field under its command-line name,
    planned and resolved. Written out by hand, so this stays the old format whatever the code writes now."""
    return {"data": str(corpus), "output_dir": str(out), "recipe": "bert", "preset": "tiny", "model_overrides": TINY,
            "init_from": None, "objective": "mlm_nsp", "packing": False, "max_length": 48, "short_seq_prob": 0.1,
            "masking_rate": 0.15, "max_predictions": 8, "whole_word_masking": False, "batch_size": 8,
            "grad_accum_steps": 1, "steps": 8, "optimizer": "adamw", "learning_rate": 0.002, "adam_beta2": 0.999,
            "weight_decay": 0.01, "warmup_steps": 2, "warmup_ratio": None, "schedule": "linear", "max_grad_norm": 1.0,
            "precision": "fp32", "compile": False, "dropout": None, "position_init": "normal",
            "attention_init": "random", "seed": 7, "eval_every": 8, "eval_batches": 2, "log_every": 2,
            "save_every": 3, "keep_checkpoints": 2, "resume": False, "overwrite": False, "max_minutes": None,
            "threads": None, "device": "auto", "progress": False, "tensorboard": False}


def test_a_run_folder_from_before_the_settings_were_grouped_still_resumes(corpus, tmp_path):
    out = tmp_path / "old"
    train(_config(corpus, out), stop_after=5)  # last checkpoint: step 3
    old = _saved_before_the_settings_were_grouped(corpus, out)
    added_since = {"pair_phase": 0.0}  # options added after the grouping, saved at their defaults
    # Grouping the settings did not change what a run folder keeps: flat, under the command-line names.
    assert json.loads((out / "config.json").read_text()) == {**old, **added_since}
    assert load_checkpoint(out)["config"] == {**old, **added_since}
    # A checkpoint holding the old format (without the options added since) resumes; its planned length (steps)
    # is read from it.
    path = latest_checkpoint(out / "checkpoints")
    state = torch.load(path, weights_only=False)
    torch.save({**state, "config": old}, path)
    (out / "config.json").write_text(json.dumps(old))
    resumed = train(_config(corpus, out, steps=None, resume=True))
    assert resumed.stopped == "finished" and resumed.step == 8 and sorted(resumed.losses) == [4, 5, 6, 7, 8]


def test_gradient_accumulation_gives_the_same_weights(corpus, tmp_path):
    one = train(_config(corpus, tmp_path / "one", steps=3, dropout=0.0, eval_batches=0))
    two = train(_config(corpus, tmp_path / "two", steps=3, dropout=0.0, eval_batches=0, grad_accum_steps=4))
    for step in (1, 2, 3):
        assert one.losses[step] == pytest.approx(two.losses[step], abs=1e-5)
    a, b = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5


def test_nan_loss_stops_with_a_checkpoint(corpus, tmp_path):
    def poison(step, loss, model):
        if step == 2:
            with torch.no_grad():
                model.bert.embeddings.word_embeddings.weight[5:].fill_(float("nan"))

    result = train(_config(corpus, tmp_path / "nan"), on_step=poison)
    assert result.stopped == "nan" and result.step == 2 and sorted(result.losses) == [1, 2]
    state = load_checkpoint(tmp_path / "nan")
    assert state["step"] == 2
    from bertforge.training.pretrain import run

    with pytest.raises(SystemExit, match="stopped at step 3: non-finite loss"):
        cfg = _config(corpus, tmp_path / "nan2", steps=3, learning_rate=1e9, max_grad_norm=1e30, warmup_steps=0,
                      schedule="constant")
        run(cfg.corpus, cfg.job, cfg.model, cfg.optim, cfg.report)


def test_export_loads_in_transformers_with_the_same_outputs(corpus, tmp_path):
    transformers = pytest.importorskip("transformers")
    from bertforge.training.export import load_pretraining_checkpoint
    from bertforge.training.export import run as export

    train(_config(corpus, tmp_path / "run", steps=2, eval_batches=0))
    out = export(tmp_path / "run", tmp_path / "hf")
    ours = load_pretraining_checkpoint(tmp_path / "run")
    theirs = transformers.BertForPreTraining.from_pretrained(out, attn_implementation="eager").eval()
    tokenizer = BertTokenizer.from_pretrained(out)
    batch = tokenizer.encode(["The for statement iterates.", "Classes"], ["It is a loop.", "have methods"],
                             padding="longest")
    tensors = batch.tensors()
    with torch.no_grad():
        mine = ours(**tensors)
        ref = theirs(**tensors)
    assert torch.allclose(mine.mlm_logits, ref.prediction_logits, atol=1e-4)
    assert torch.allclose(mine.nsp_logits, ref.seq_relationship_logits, atol=1e-5)


def test_losses_read_each_pretraining_output_type_and_refuse_others():
    """Both pre-training heads' outputs are scored (NSP only where there is one); any other output, even one
    with a `logits` field, is a TypeError rather than a guess."""
    encoder = BertOutput(sequence_output=torch.zeros(2, 3, 4), pooled_output=None)
    mlm = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 2.0], [0.0, 2.0, 0.0]])  # [N=3, V=3]
    labels, nsp_labels = torch.tensor([0, 2, 0]), torch.tensor([0, 1])
    nsp = torch.tensor([[1.0, 0.0], [1.0, 0.0]])  # [B, 2]: both say IsNext, the second is wrong
    stats = losses(PreTrainingOutput(mlm_logits=mlm, nsp_logits=nsp, encoder=encoder), labels, nsp_labels)
    assert int(stats["mlm_correct"]) == 2 and int(stats["mlm_count"]) == 3
    assert int(stats["nsp_correct"]) == 1 and int(stats["nsp_count"]) == 2
    expected = torch.nn.functional.cross_entropy(mlm, labels, reduction="sum")
    torch.testing.assert_close(stats["mlm_sum"], expected)
    ltr = losses(CausalLMOutput(logits=mlm, cache=None, encoder=encoder), labels, nsp_labels, mlm_weight=1 / 3)
    assert set(ltr) == {"mlm_term", "mlm_sum", "mlm_correct", "mlm_count"}
    torch.testing.assert_close(ltr["mlm_sum"], expected)  # the plain sum, whatever the weight
    torch.testing.assert_close(ltr["mlm_term"], expected / 3)  # what training backpropagates
    with pytest.raises(TypeError, match="ClassifierOutput"):
        losses(ClassifierOutput(logits=mlm, encoder=encoder), labels, nsp_labels)


def test_lamb_step_matches_its_formula():
    w0 = np.array([[0.5, -1.0], [2.0, 0.25]])
    g = np.array([[0.1, 0.2], [-0.3, 0.05]])
    lr, wd, eps = 0.1, 0.01, 1e-6
    param = torch.nn.Parameter(torch.tensor(w0))
    optimizer = Lamb([param], lr=lr, weight_decay=wd, eps=eps)
    param.grad = torch.tensor(g)
    optimizer.step()
    # After one step Adam's bias-corrected moments are g and g^2: the update is g/(|g|+eps) + wd*w.
    update = g / (np.abs(g) + eps) + wd * w0
    expected = w0 - lr * (np.linalg.norm(w0) / np.linalg.norm(update)) * update
    assert np.allclose(param.detach().numpy(), expected, atol=1e-12)


def test_ddp_two_processes_match_one_process(corpus, tmp_path, run_processes):
    settings = dict(steps=3, dropout=0.0, eval_batches=0, save_every=100)
    single = train(_config(corpus, tmp_path / "single", **settings))
    run_processes(train, _config(corpus, tmp_path / "ddp", **settings))
    a, b = _weights(tmp_path / "single"), _weights(tmp_path / "ddp")
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5
    logged = [json.loads(line) for line in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert logged[-1]["loss"] == pytest.approx(single.losses[3], abs=1e-5)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_close_to_fp32(corpus, tmp_path, precision):
    settings = dict(steps=2, dropout=0.0, eval_batches=1, eval_every=2)
    full = train(_config(corpus, tmp_path / "fp32", **settings))
    mixed = train(_config(corpus, tmp_path / precision, precision=precision, **settings))
    for step in (1, 2):
        assert mixed.losses[step] == pytest.approx(full.losses[step], abs=0.05)


def test_lamb_and_a_second_phase_from_the_first(corpus, tmp_path):
    first = train(_config(corpus, tmp_path / "phase1", optimizer="lamb", learning_rate=0.1, steps=6, eval_every=6))
    assert first.evaluations[6]["mlm_loss"] < first.evaluations[0]["mlm_loss"] - 0.1
    # Phase 2 starts from phase 1's weights (here at the same length, so the held-out set is the same):
    # its step-0 evaluation is exactly phase 1's last one.
    second = train(_config(corpus, tmp_path / "phase2", init_from=tmp_path / "phase1", steps=1, eval_every=1))
    assert second.evaluations[0] == first.evaluations[6]
    longer = train(_config(corpus, tmp_path / "phase2_64", init_from=tmp_path / "phase1", max_length=64,
                           steps=1, eval_batches=0))
    assert longer.stopped == "finished"


def test_a_pretraining_job_keeps_freed_memory(corpus, tmp_path, monkeypatch):
    """hardware.keep_freed_memory (what spares a step its page faults) is the job's to call, once it starts."""
    from bertforge.training import pretrain

    calls = []
    monkeypatch.setattr(pretrain, "keep_freed_memory", lambda: calls.append(1) or True)
    train(_config(corpus, tmp_path / "run", steps=1, eval_batches=0))
    assert calls == [1]


@pytest.mark.parametrize("row_multiple", [1, 8])
def test_a_training_step_gives_the_gradient_of_the_mean_losses(corpus, tmp_path, row_multiple, monkeypatch):
    """Trainer.forward_backward (the vocabulary loss weighted inside, its gradient made in the forward) against
    the plain computation: every weight's gradient of mean MLM cross-entropy at the masked positions + mean NSP
    cross-entropy, in one micro-batch and in four; also with the rows padded (as bf16 on a CPU pads them)."""
    import torch.nn.functional as F

    from bertforge.data.masking import MaskedBatch
    from bertforge.data.pretraining import PreTrainingBatch
    from bertforge.training import pretrain
    from bertforge.training.distributed import World
    from bertforge.training.pretrain import Trainer, build_model, build_optimizer

    monkeypatch.setattr(pretrain, "matmul_row_multiple", lambda precision, device: row_multiple)

    g = torch.Generator().manual_seed(3)
    ids = torch.randint(5, 400, (8, 16), generator=g)
    ids[:, 0], ids[:, 8], ids[:, -1] = 2, 3, 3  # [CLS] A [SEP] B [SEP]
    types = (torch.arange(16) > 8).long().expand(8, 16)
    selected = (torch.rand(8, 16, generator=g) < 0.3) & (ids > 4)
    batch = PreTrainingBatch(ids, types, torch.ones_like(ids), ids <= 4, torch.randint(0, 2, (8,), generator=g))
    masked = MaskedBatch(torch.where(selected, 4, ids), torch.where(selected, ids, -100), selected)
    for accumulation in (1, 4):
        cfg = _config(corpus, tmp_path / f"run{accumulation}", dropout=0.0, precision="fp32",
                      grad_accum_steps=accumulation)
        torch.manual_seed(0)
        model = build_model(cfg, 400)
        trainer = Trainer(cfg, model, model, build_optimizer(cfg, model), None,
                          torch.amp.GradScaler("cpu", enabled=False), World(), torch.device("cpu"), 4)
        trainer.forward_backward(batch, masked)
        ours = {name: p.grad.clone() for name, p in model.named_parameters()}
        model.zero_grad()
        out = model(masked.input_ids, batch.attention_mask, types, masked_positions=selected)
        loss = F.cross_entropy(out.mlm_logits, ids[selected]) + F.cross_entropy(out.nsp_logits, batch.nsp_labels)
        loss.backward()
        for name, p in model.named_parameters():
            torch.testing.assert_close(ours[name], p.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_the_evaluation_a_budget_plan_times_comes_after_an_untimed_one_batch_evaluation(corpus, tmp_path, monkeypatch):
    """The first evaluation of a process pays one-off set-up (compiling the loss kernels: seconds); timed as it
    is, the plan would reserve that ten times over for the run's evaluations."""
    from bertforge.training import pretrain

    batches_per_call = []
    real = pretrain.evaluate

    def counting(model, heldout, *args, **kwargs):
        batches_per_call.append(len(heldout.mlm))
        return real(model, heldout, *args, **kwargs)

    monkeypatch.setattr(pretrain, "evaluate", counting)
    train(_config(corpus, tmp_path / "run", steps=None, max_minutes=0.05, eval_batches=3))
    assert batches_per_call[:2] == [1, 3]
