"""int8 with SmoothQuant activation smoothing (inference/int8.py): smoothing alone is exact math in float32 (and
the tempting LayerNorm fold is not, in post-LayerNorm BERT), and smoothing brings int8 closer to float32 on a
tiny model with outlier channels injected the way real BERTs have them (large LayerNorm gains)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bertforge.errors import OptionError
from bertforge.inference.embed import embed_texts
from bertforge.inference.int8 import (
    CALIBRATION_TEXTS,
    SmoothedLinear,
    activation_maxima,
    quantize_int8,
    smooth_for_int8,
    smoothed_int8,
    smoothing_scale,
)
from bertforge.inference.predictor import Predictor
from bertforge.inference.tiny import WORDS, tiny_config, tiny_tokenizer
from bertforge.model import BertModel

OUTLIERS = [5, 40, 77]  # hidden channels given outlier LayerNorm gains (of H = 96)


def _sentences(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    words = [w for w in WORDS if w.isalpha()]
    return [" ".join(rng.choice(words, size=rng.integers(4, 20))) for _ in range(n)]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return tiny_tokenizer(tmp_path_factory.mktemp("int8_tok"))


@pytest.fixture(scope="module")
def outlier_model(tok) -> BertModel:
    """A random tiny BERT with the activation outliers int8 stumbles on: its LayerNorms (all but the last)
    give three channels a gain of 10, and four GELU units get 20 times larger inputs. Weights have the
    1/sqrt(fan-in) scale, so every sublayer (and its int8 error) matters beside the residual stream."""
    torch.manual_seed(0)
    model = BertModel(tiny_config(tok.vocab_size)).eval()
    with torch.no_grad():
        for layer in model.layers:
            for linear in (layer.attention.qkv, layer.attention.output, layer.intermediate, layer.output):
                torch.nn.init.normal_(linear.weight, std=linear.in_features ** -0.5)
            layer.intermediate.weight[:4] *= 20.0
        norms = [model.embeddings.layer_norm] + [n for layer in model.layers
                                                 for n in (layer.attention_norm, layer.output_norm)]
        for norm in norms[:-1]:
            norm.weight[OUTLIERS] = 10.0
    return model


@pytest.fixture(scope="module")
def maxima(outlier_model, tok) -> dict[str, torch.Tensor]:
    return activation_maxima(outlier_model, tok, _sentences(48, seed=1))


def _outputs(model, tok, texts) -> np.ndarray:
    """Token vectors (not pooled or normalised: every difference shows) from the padded reference forward."""
    enc = tok.encode(texts, max_length=64)
    predictor = Predictor(model, tok, mode="padded")
    return np.concatenate([batch.sequence_output.numpy() for batch in predictor.run(enc)])


def test_maxima_see_the_outliers(maxima) -> None:
    qkv = maxima["layers.0.attention.qkv"]
    others = np.delete(qkv.numpy(), OUTLIERS)
    assert qkv.shape == (96,) and qkv[OUTLIERS].min() > 5 * others.max()
    assert maxima["layers.1.output"].shape == (80,)  # the feed-forward output's input is the GELU's, I = 80
    assert set(maxima) == {f"layers.{i}.{n}" for i in range(2)
                           for n in ("attention.qkv", "attention.output", "intermediate", "output")}


@pytest.mark.parametrize("per_token_scales", [False, True])
def test_smoothing_leaves_float32_outputs_unchanged(outlier_model, maxima, tok, per_token_scales) -> None:
    texts = _sentences(12, seed=2)
    smoothed = smooth_for_int8(outlier_model, maxima, alpha=0.5, per_token_scales=per_token_scales)
    assert sum(isinstance(m, SmoothedLinear) for m in smoothed.modules()) == 8
    scale = 1 / smoothed.layers[0].attention.qkv.inv_scale
    assert scale[OUTLIERS].min() > 2 * scale.median()  # it really moved range from outlier channels
    reference = _outputs(outlier_model, tok, texts)
    assert np.abs(_outputs(smoothed, tok, texts) - reference).max() < 1e-4
    packed = embed_texts(smoothed, tok, texts).vectors  # the packed forward goes through the same modules
    assert np.abs(packed - embed_texts(outlier_model, tok, texts).vectors).max() < 1e-4
    assert not any(isinstance(m, SmoothedLinear) for m in outlier_model.modules())  # the caller's model is intact


def test_the_test_catches_a_wrong_fold(outlier_model, maxima, tok) -> None:
    """Mutations of the fold must break the float32 equality the previous test checks."""
    texts = _sentences(12, seed=2)
    reference = _outputs(outlier_model, tok, texts)

    # 1. The activations multiplied by s instead of divided.
    wrong_direction = smooth_for_int8(outlier_model, maxima, alpha=0.5)
    layer = wrong_direction.layers[1].intermediate
    layer.inv_scale = 1 / layer.inv_scale
    assert np.abs(_outputs(wrong_direction, tok, texts) - reference).max() > 1e-2

    # 2. The pre-LayerNorm recipe: Q/K/V's 1/s folded into the LayerNorm before it. In post-LayerNorm BERT
    # that LayerNorm's output is also the residual stream, so the fold changes the model.
    folded = smooth_for_int8(outlier_model, maxima, alpha=0.5)
    with torch.no_grad():
        qkv = folded.layers[1].attention.qkv
        norm = folded.layers[0].output_norm  # the right LayerNorm: its output is layer 1's input
        norm.weight.mul_(qkv.inv_scale)
        norm.bias.mul_(qkv.inv_scale)
        qkv.inv_scale = torch.ones_like(qkv.inv_scale)
    assert np.abs(_outputs(folded, tok, texts) - reference).max() > 1e-2

    # 3. The same fold into the wrong LayerNorm (layer 1's own attention_norm comes after Q/K/V).
    wrong_norm = smooth_for_int8(outlier_model, maxima, alpha=0.5)
    with torch.no_grad():
        qkv = wrong_norm.layers[1].attention.qkv
        wrong_norm.layers[1].attention_norm.weight.mul_(qkv.inv_scale)
        wrong_norm.layers[1].attention_norm.bias.mul_(qkv.inv_scale)
        qkv.inv_scale = torch.ones_like(qkv.inv_scale)
    assert np.abs(_outputs(wrong_norm, tok, texts) - reference).max() > 1e-2


def test_smoothing_scale_is_smoothquants_formula() -> None:
    act_max = torch.tensor([4.0, 1.0, 0.0])
    weight = torch.tensor([[1.0, -0.25, 3.0], [-0.5, 0.1, 1.0]])  # column maxima 1, 0.25, 3
    scale = smoothing_scale(act_max, weight, alpha=0.5)
    assert torch.allclose(scale, torch.tensor([2.0, 2.0, 1.0]))  # sqrt(4/1), sqrt(1/0.25); never seen -> 1
    assert torch.allclose(smoothing_scale(act_max, weight, alpha=1.0)[:2], act_max[:2])


@pytest.mark.parametrize(("keep_ffn_output", "per_token_scales"), [(True, False), (False, False), (True, True)])
def test_smoothed_int8_is_closer_to_float32(outlier_model, maxima, tok, keep_ffn_output, per_token_scales) -> None:
    texts = _sentences(24, seed=3)  # other sentences than the calibration ones
    reference = embed_texts(outlier_model, tok, texts, normalize=True).vectors

    def cosine_error(model) -> float:
        return float((1 - (embed_texts(model, tok, texts, normalize=True).vectors * reference).sum(-1)).mean())

    plain = cosine_error(quantize_int8(outlier_model, keep_ffn_output=keep_ffn_output))
    smoothed = cosine_error(quantize_int8(outlier_model, maxima=maxima, keep_ffn_output=keep_ffn_output,
                                          per_token_scales=per_token_scales))
    assert smoothed < 0.2 * plain, (smoothed, plain)  # measured: 0.03-0.05 of the plain error


def test_predictor_int8_calibrates_and_smooths(outlier_model, tok) -> None:
    predictor = Predictor(outlier_model, tok, precision="int8")
    # Q/K/V, attention output and feed-forward input of 2 layers; the feed-forward output stays float32.
    assert sum(isinstance(m, SmoothedLinear) for m in predictor.model.modules()) == 6
    assert type(predictor.model.layers[0].output) is torch.nn.Linear
    assert any("quantized" in type(m).__module__ for m in predictor.model.modules())
    texts = _sentences(8, seed=4)
    reference = embed_texts(outlier_model, tok, texts, normalize=True).vectors
    assert (embed_texts(outlier_model, tok, texts, normalize=True, predictor=predictor).vectors
            * reference).sum(-1).min() > 0.99


def test_smoothed_int8_is_the_one_int8_model(outlier_model, tok) -> None:
    """smoothed_int8 (what evaluate and predict run) is quantize_int8 smoothed with maxima calibrated on the
    built-in CALIBRATION_TEXTS, and the Predictor's int8 model is that same model."""
    built = smoothed_int8(outlier_model, tok)
    by_hand = quantize_int8(outlier_model, maxima=activation_maxima(outlier_model, tok, CALIBRATION_TEXTS))
    unsmoothed = quantize_int8(outlier_model)
    batch = tok.encode(_sentences(4, seed=5), padding="longest").tensors()
    with torch.no_grad():
        expected = by_hand(**batch).sequence_output
        torch.testing.assert_close(built(**batch).sequence_output, expected, atol=0, rtol=0)
        predictor = Predictor(outlier_model, tok, precision="int8")
        torch.testing.assert_close(predictor.model(**batch).sequence_output, expected, atol=0, rtol=0)
        assert not torch.equal(unsmoothed(**batch).sequence_output, expected)  # the check can tell them apart


def test_bad_smoothing_settings_are_one_line_errors(outlier_model, maxima, tok) -> None:
    with pytest.raises(OptionError, match="alpha=1.5: choose a value from 0 to 1"):
        smooth_for_int8(outlier_model, maxima, alpha=1.5)
    with pytest.raises(OptionError, match="calibration texts are empty"):
        activation_maxima(outlier_model, tok, [])
    with pytest.raises(OptionError, match="per_token_scales works on smoothed Linears: give calibrated maxima"):
        quantize_int8(outlier_model, per_token_scales=True)
    with pytest.raises(OptionError, match="layers.9.intermediate is not an encoder Linear of this model"):
        smooth_for_int8(outlier_model, {"layers.9.intermediate": torch.ones(96)})


def test_real_checkpoint_smoothed_int8_is_closer(minilm_dir, shared_data) -> None:
    """all-MiniLM-L6-v2 on 64 SST-2 dev sentences: the Predictor's int8 (smoothed, built-in calibration) against
    the unsmoothed quantize_int8, both compared with the float32 vectors."""
    from bertforge.checkpoint import load_model
    from bertforge.tokenizer import BertTokenizer

    model, tok = load_model(minilm_dir), BertTokenizer.from_pretrained(minilm_dir)
    lines = (shared_data / "glue" / "SST-2" / "dev.tsv").read_text(encoding="utf-8").splitlines()[1:65]
    texts = [line.split("\t")[0] for line in lines]
    fp32 = embed_texts(model, tok, texts, normalize=True).vectors
    plain = (embed_texts(quantize_int8(model), tok, texts, normalize=True).vectors * fp32).sum(-1)
    smoothed = (embed_texts(model, tok, texts, normalize=True, predictor=Predictor(model, tok, precision="int8"))
                .vectors * fp32).sum(-1)
    # Measured: plain mean 0.985 (min 0.974), smoothed mean 0.998 (min 0.995).
    assert smoothed.mean() > 0.997 and smoothed.min() > 0.99, (smoothed.mean(), smoothed.min())
    assert 1 - smoothed.mean() < 0.3 * (1 - plain.mean()), (smoothed.mean(), plain.mean())
