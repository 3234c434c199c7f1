"""The one `precision` option: what each device accepts, bf16 embeddings against fp32 on a tiny model, int8
through the Predictor, and every job that runs a model takes `--precision`."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from bertforge import precision as precision_module
from bertforge.cli import call_job, main
from bertforge.config import BertConfig
from bertforge.errors import OptionError
from bertforge.heads import BertForSequenceClassification
from bertforge.inference.embed import embed_texts
from bertforge.inference.predictor import Predictor
from bertforge.inference.tiny import build, tiny_tokenizer
from bertforge.model import BertModel
from bertforge.precision import autocast, cast_for_inference, check_precision, inference_context, resolve_precision

TEXTS = ["john played the guitar in paris", "a good movie", "the night was new", "who is the capital ?",
         "they love music and film , she hate it"]


def pretend_native_bf16(monkeypatch, native: bool) -> None:
    monkeypatch.setattr(precision_module, "native_bf16", lambda device: native)


def test_auto_is_bf16_only_where_the_hardware_has_it(monkeypatch) -> None:
    pretend_native_bf16(monkeypatch, True)
    assert resolve_precision("auto", "cpu") == "bf16"
    pretend_native_bf16(monkeypatch, False)
    assert resolve_precision("auto", "cpu") == "fp32"
    assert resolve_precision("fp32", "cpu") == "fp32"


def test_unusable_combinations_are_one_clear_error(monkeypatch) -> None:
    training_only = r"--precision int8: choose one of auto, fp32, bf16, fp16 \(int8 is for inference only\)"
    with pytest.raises(OptionError, match=training_only):
        check_precision("int8", training=True)
    with pytest.raises(OptionError, match="--precision fp64: choose one of auto, fp32, bf16, fp16, int8"):
        resolve_precision("fp64", "cpu")
    with pytest.raises(OptionError, match="int8 runs on the CPU only, not on cuda"):
        resolve_precision("int8", "cuda")
    pretend_native_bf16(monkeypatch, False)
    with pytest.raises(OptionError, match="--precision bf16: .* has no bf16 support .*use --precision fp16 or fp32"):
        resolve_precision("bf16", "cuda")
    with pytest.raises(OptionError, match="--precision bf16: not supported on mps"):
        resolve_precision("bf16", "mps")


def test_emulated_bf16_on_a_cpu_runs_and_says_it_is_slow(monkeypatch, caplog) -> None:
    pretend_native_bf16(monkeypatch, False)
    with caplog.at_level(logging.WARNING, logger="bertforge.precision"):
        assert resolve_precision("bf16", "cpu") == "bf16"
    assert "no native bf16" in caplog.text
    pretend_native_bf16(monkeypatch, True)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="bertforge.precision"):
        resolve_precision("bf16", "cpu")
    assert caplog.text == ""


def test_autocast_runs_matmuls_in_bf16() -> None:
    a = torch.randn(4, 8)
    with autocast("bf16", "cpu"):
        assert (a @ a.T).dtype == torch.bfloat16
    with autocast("fp32", "cpu"):
        assert (a @ a.T).dtype == torch.float32


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, BertModel]:
    directory = tmp_path_factory.mktemp("tiny")
    return directory, build(BertModel, directory, seed=5)


@pytest.mark.parametrize("pooling", ["mean", "cls", "max"])
def test_bf16_vectors_point_where_fp32_ones_do(tiny, pooling) -> None:
    directory, model = tiny
    tok = tiny_tokenizer(directory)
    fp32 = embed_texts(model, tok, TEXTS, pooling=pooling, normalize=True).vectors
    bf16 = embed_texts(model, tok, TEXTS, pooling=pooling, normalize=True, precision="bf16").vectors
    assert bf16.dtype == np.float32
    cosine = (fp32 * bf16).sum(-1)
    assert cosine.min() >= 0.999, cosine
    assert np.abs(fp32 - bf16).max() > 1e-6  # it really ran in bf16 (fp32 twice gives identical vectors)


def _padded_inputs(tok, texts):
    enc = tok.encode(texts)
    ids = torch.tensor([x + [0] * (max(map(len, enc.input_ids)) - len(x)) for x in enc.input_ids])
    mask = (torch.arange(ids.shape[1])[None] < torch.tensor([len(x) for x in enc.input_ids])[:, None]).long()
    return ids, mask


def test_bf16_predictor_runs_its_own_copy_in_bf16_throughout(tiny) -> None:
    directory, model = tiny
    tok = tiny_tokenizer(directory)
    predictor = Predictor(model, tok, precision="bf16")
    assert {p.dtype for p in predictor._runner.parameters()} == {torch.bfloat16}  # norms and embeddings too
    assert all(p.dtype == torch.float32 for p in model.parameters())  # the caller's model is untouched
    states = []
    hook = predictor._runner.layers[0].attention_norm.register_forward_hook(
        lambda module, args, out: states.append(out.dtype))
    vectors = embed_texts(model, tok, TEXTS, normalize=True, predictor=predictor).vectors
    hook.remove()
    assert states and set(states) == {torch.bfloat16}  # the residual stream is bf16, not autocast's fp32
    assert vectors.dtype == np.float32  # handed back in fp32, for the caller's poolings and heads
    # Each token's state stays where autocast over the caller's fp32 model puts it.
    ids, mask = _padded_inputs(tok, TEXTS[:3])
    with torch.inference_mode():
        with autocast("bf16", "cpu"):
            expected = model(ids, mask).sequence_output.float()
        got = predictor._runner(ids, mask).sequence_output.float()
    cosine = torch.nn.functional.cosine_similarity(expected, got, dim=-1)[mask.bool()]
    assert cosine.min() > 0.999, cosine.min()


@pytest.mark.parametrize("positions", ["sinusoidal", "relative_key_query", "rope", "alibi"])
def test_the_bf16_copy_runs_every_position_scheme(tiny, positions) -> None:
    # Their tables, slopes and angles become bf16 buffers or meet bf16 queries; each must still run and agree.
    directory, _ = tiny
    tok = tiny_tokenizer(directory)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tok.vocab_size, hidden_size=64, num_layers=2, num_heads=4,
                        intermediate_size=128, position_embedding_type=positions)
    model = BertModel(config).eval()
    fp32 = embed_texts(model, tok, TEXTS, normalize=True).vectors
    bf16 = embed_texts(model, tok, TEXTS, normalize=True, precision="bf16").vectors
    assert (fp32 * bf16).sum(-1).min() >= 0.999


def test_evaluate_and_predict_run_the_bf16_copy_the_predictor_runs(tmp_path) -> None:
    from bertforge.training.finetune_loop import ready_to_predict

    model = build(BertForSequenceClassification, tmp_path, seed=8, labels=["neg", "pos"])
    ready = ready_to_predict(model, torch.device("cpu"), "bf16", tokenizer=tiny_tokenizer(tmp_path))
    assert {p.dtype for p in ready.parameters()} == {torch.bfloat16}  # one bf16 inference, every path
    assert all(p.dtype == torch.float32 for p in model.parameters())  # the loaded model is untouched
    assert ready_to_predict(model, torch.device("cpu"), "fp32", tokenizer=tiny_tokenizer(tmp_path)) is model


def test_fp16_predictor_casts_its_linear_weights_once_to_the_values_autocast_gives(tiny) -> None:
    directory, model = tiny
    tok = tiny_tokenizer(directory)
    runner = cast_for_inference(model, "fp16")
    linear = [m for m in runner.modules() if isinstance(m, torch.nn.Linear)]
    assert linear and all(m.weight.dtype == torch.float16 for m in linear)
    norms = [m for m in runner.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert norms and all(m.weight.dtype == torch.float32 for m in norms)  # fp16's range: norms stay fp32
    # Bit for bit what autocast over the caller's fp32 model gives: the cast is moved, not changed.
    ids, mask = _padded_inputs(tok, TEXTS[:3])
    with torch.inference_mode(), inference_context("fp16", "cpu"):
        expected = model(ids, mask).sequence_output
        got = runner(ids, mask).sequence_output
    assert torch.equal(expected, got)


def test_predictor_int8_quantises_its_own_copy(tiny) -> None:
    directory, model = tiny
    tok = tiny_tokenizer(directory)
    predictor = Predictor(model, tok, precision="int8")
    kinds = {type(m).__module__ for m in predictor.model.modules()}
    assert any("quantized" in k for k in kinds)
    assert not any("quantized" in type(m).__module__ for m in model.modules())  # the caller's model is untouched
    with pytest.raises(OptionError, match="the given predictor runs in 'int8'"):
        embed_texts(model, tok, TEXTS, precision="bf16", predictor=predictor)


@pytest.mark.parametrize("job", ["embed", "classify", "ner", "qa", "fill-mask", "serve", "finetune", "pretrain"])
def test_every_model_job_takes_precision(job: str, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([job, "--help"])
    assert exit_info.value.code == 0
    help_text = " ".join(capsys.readouterr().out.split())
    entry = help_text[help_text.index("--precision", help_text.index("options:")):]
    end = entry.find(" --", 3)  # up to the next option, if any
    entry = entry if end < 0 else entry[:end]
    assert "'fp32'" in entry and "'bf16'" in entry, entry  # the choices, from the type
    assert ("'int8'" in entry) == (job not in ("finetune", "pretrain")), entry


def test_classify_cli_in_bf16_and_int8_agrees_with_fp32(tmp_path: Path, capsys) -> None:
    build(BertForSequenceClassification, tmp_path, seed=8, labels=["neg", "pos", "mixed"])
    results = {}
    for name in ("fp32", "bf16", "int8"):
        main(["classify", "--model", str(tmp_path), "--text", json.dumps(TEXTS), "--precision", name])
        results[name] = json.loads(capsys.readouterr().out)
    for name in ("bf16", "int8"):
        for ref, got in zip(results["fp32"], results[name], strict=True):
            assert max(abs(ref["scores"][k] - got["scores"][k]) for k in ref["scores"]) < 0.02
    with pytest.raises(SystemExit) as exit_info:
        main(["classify", "--model", str(tmp_path), "--text", "a", "--precision", "fp64"])
    assert exit_info.value.code == 2
    assert "precision" in capsys.readouterr().err


def test_finetune_in_bf16_follows_fp32_and_saves_fp32_weights(tmp_path: Path, monkeypatch) -> None:
    from safetensors import safe_open

    from bertforge.training import finetune, finetune_loop

    build(BertModel, tmp_path / "base", seed=2)
    rows = [{"text": f"the movie was {word} , {filler}", "label": "pos" if word == "good" else "neg"}
            for word in ("good", "bad") for filler in ("the plot", "she said", "in paris", "they play", "at night")]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    used = []
    monkeypatch.setattr(finetune_loop, "autocast", lambda p, d: used.append(p) or autocast(p, d))
    losses = {}
    for name in ("fp32", "bf16"):
        result = call_job(finetune.run, {
            "output_dir": tmp_path / name, "model": str(tmp_path / "base"), "train": tmp_path / "train.jsonl",
            "validation": [tmp_path / "train.jsonl"], "epochs": 2, "batch_size": 4, "learning_rate": 1e-3,
            "warmup_ratio": 0.0, "dropout": 0.0, "max_length": 16, "progress": False, "tensorboard": False,
            "precision": name})
        losses[name] = [h["train_loss"] for h in result.history]
    assert used.count("bf16") == used.count("fp32") > 6  # every training step and evaluation batch
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=0.02)
    assert losses["bf16"] != losses["fp32"]  # really a different computation
    assert json.loads((tmp_path / "bf16" / "finetune_config.json").read_text())["precision"] == "bf16"
    with safe_open(str(tmp_path / "bf16" / "model.safetensors"), "pt") as weights:
        assert {weights.get_tensor(k).dtype for k in weights.keys()} == {torch.float32}
    with pytest.raises(OptionError, match="int8 is for inference only"):
        call_job(finetune.run, {"output_dir": tmp_path / "int8", "model": str(tmp_path / "base"),
                                "train": tmp_path / "train.jsonl", "precision": "int8"})
