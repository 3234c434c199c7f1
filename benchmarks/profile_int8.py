"""Where int8 embedding time and accuracy go (issue 16, item 3): a short profile, not a timed benchmark.

    python benchmarks/profile_int8.py --texts 200 --threads 2      # about a minute on 2 cores
    OMP_NUM_THREADS=1 python benchmarks/profile_int8.py --only smoothing --threads 1   # accuracy only, ~20 min

1. profile: torch.profiler over the same texts through the float32 Predictor and the int8 one (quantize_int8):
   self CPU time per operator family (int8 matmuls, float matmuls, activation quantisation, attention, ...).
2. layers: mean cosine to the float32 vectors when int8 is applied to different Linear layers (attention
   projections, feed-forward in, feed-forward out) with weights per channel or per tensor.
3. smoothing: SmoothQuant activation smoothing (inference/int8.py) against plain quantize_int8: mean and min
   cosine to the float32 vectors on 500 held-out sentences and STS-B dev Spearman, by alpha, by whether the
   feed-forward output stays float32, and by calibration set (300 real sentences, disjoint from the 500, or
   the built-in CALIBRATION_TEXTS that Predictor(precision="int8") uses).
"""

from __future__ import annotations

import argparse
import copy
import warnings
from collections import defaultdict

import numpy as np
import torch
from bench_inference import DATA, load_texts, required_stsb_pairs, spearman
from torch import nn

from bertforge.checkpoint import load_model
from bertforge.inference.embed import embed_texts
from bertforge.inference.predictor import Predictor
from bertforge.pretrained import packaged_model_dir
from bertforge.tokenizer import BertTokenizer

# Operator name fragments -> family, first match wins (names as torch.profiler reports them).
FAMILIES = (
    ("quantized::linear", "int8 matmul (quantized::linear_dynamic)"),
    ("quantize_per", "activation quantisation"),
    ("addmm", "float matmul (addmm/mm/bmm)"),
    ("aten::mm", "float matmul (addmm/mm/bmm)"),
    ("bmm", "float matmul (addmm/mm/bmm)"),
    ("scaled_dot_product", "attention (SDPA)"),
    ("layer_norm", "LayerNorm"),
    ("gelu", "GELU"),
    ("copy_", "copies / layout"),
    ("contiguous", "copies / layout"),
    ("index", "packing (index, scatter)"),
    ("scatter", "packing (index, scatter)"),
)


def family(name: str) -> str:
    return next((label for key, label in FAMILIES if key in name), "other")


def profile(predictor: Predictor, model, tok, texts: list[str]) -> dict[str, float]:
    """Self CPU seconds per operator family for one pass over `texts`."""
    embed_texts(model, tok, texts[:16], predictor=predictor)  # warm-up
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        embed_texts(model, tok, texts, predictor=predictor)
    seconds: dict[str, float] = defaultdict(float)
    for event in prof.key_averages():
        seconds[family(event.key)] += event.self_cpu_time_total / 1e6
    return dict(seconds)


def quantized(model: nn.Module, chosen: str, per_channel: bool) -> nn.Module:
    """A copy of `model` with dynamic int8 on the Linear layers whose name matches `chosen`."""
    from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig, quantize_dynamic

    qconfig = per_channel_dynamic_qconfig if per_channel else default_dynamic_qconfig
    picks = {
        "attention projections": lambda n: ".attention." in n,
        "feed-forward in": lambda n: n.endswith(".intermediate"),
        "feed-forward out": lambda n: n.endswith(".output") and ".attention." not in n,
        "all Linear": lambda n: True,
    }[chosen]
    model = copy.deepcopy(model).eval()
    layers = {n: qconfig for n, m in model.named_modules() if isinstance(m, nn.Linear) and picks(n)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return quantize_dynamic(model, layers, dtype=torch.qint8)


def smoothing(model, tok) -> None:
    """Accuracy of int8 with and without activation smoothing (no timings: run it on a busy machine too)."""
    from bertforge.inference.int8 import CALIBRATION_TEXTS, activation_maxima, quantize_int8

    pool = list(dict.fromkeys(load_texts(DATA, 1000, seed=1)))  # SST-2 dev + Wikipedia, no duplicates
    calibration, held_out = pool[:300], pool[300:800]
    a, b, gold = required_stsb_pairs(DATA)

    def vectors(m, texts):
        return embed_texts(m, tok, texts, normalize=True).vectors

    reference = vectors(model, held_out)
    fp32_sts = spearman((vectors(model, a) * vectors(model, b)).sum(-1), gold)
    real, builtin = "300 real", f"built-in {len(CALIBRATION_TEXTS)}"
    maxima = {real: activation_maxima(model, tok, calibration),
              builtin: activation_maxima(model, tok, CALIBRATION_TEXTS)}
    # (label, calibration, alpha, FFN output float32, per-token scales)
    variants = [("quantize_int8 without maxima (before)", None, 0.0, True, False),
                ("no smoothing, all int8", None, 0.0, False, False)]
    variants += [("smoothed", real, alpha, keep, False) for alpha in (0.3, 0.5, 0.75) for keep in (True, False)]
    variants += [("smoothed", builtin, 0.75, keep, False) for keep in (True, False)]
    variants += [("smoothed + per-token scales", calibrated, 0.75, keep, True)
                 for calibrated, keep in ((builtin, True), (builtin, False), (real, False))]
    print(f"\n== int8 accuracy: {len(held_out)} held-out sentences, STS-B dev {len(gold)} pairs "
          f"(float32 Spearman {fp32_sts:.4f}) ==")
    print(f"{'variant':38s} {'calibration':12s} {'alpha':>5s} {'FFN out':>7s} {'mean cos':>9s} {'min cos':>8s} "
          f"{'STS-B':>7s} {'cost':>8s}")
    for label, calibrated, alpha, keep, per_token in variants:
        int8 = quantize_int8(model, maxima=maxima.get(calibrated), alpha=alpha, keep_ffn_output=keep,
                             per_token_scales=per_token)
        cos = (vectors(int8, held_out) * reference).sum(-1)
        sts = spearman((vectors(int8, a) * vectors(int8, b)).sum(-1), gold)
        print(f"{label:38s} {calibrated or '-':12s} {alpha if calibrated else '-':>5} {'fp32' if keep else 'int8':>7s} "
              f"{cos.mean():9.4f} {cos.min():8.4f} {sts:7.4f} {sts - fp32_sts:+8.4f}", flush=True)
    floor(model, tok, held_out, reference, maxima[builtin])


def floor(model, tok, held_out: list[str], reference: np.ndarray, maxima) -> None:
    """Which rounding costs what: int8 emulated in float32 (round to the grid, compute in float), weights and
    activations apart, activations with torch's 7-bit range (reduce_range, which x86 kernels need against
    int16 overflow) or the full 8 bits."""
    from bertforge.inference.int8 import encoder_linears, is_ffn_output, smooth_for_int8

    def round_weight(w: torch.Tensor) -> torch.Tensor:  # symmetric, one scale per output channel
        step = w.abs().amax(1, keepdim=True) / 127
        return torch.round(w / step) * step

    def round_activation(x: torch.Tensor, levels: int) -> torch.Tensor:  # affine, one scale per call
        low, high = min(x.min().item(), 0.0), max(x.max().item(), 0.0)
        step = max(high - low, 1e-12) / levels
        zero = round(-low / step)
        return (torch.clamp(torch.round(x / step) + zero, 0, levels) - zero) * step

    print("\n== int8 emulated in float32 (smoothed: built-in calibration, alpha 0.75); mean (min) cosine ==")
    print(f"{'rounded':34s} {'FFN out fp32':>16s} {'all Linear':>16s}")
    for label, smooth, weights, levels in (("weights only", False, True, None),
                                           ("weights only, smoothed", True, True, None),
                                           ("activations 7-bit", False, False, 127),
                                           ("activations 7-bit, smoothed", True, False, 127),
                                           ("activations 8-bit, smoothed", True, False, 255),
                                           ("both, 7-bit, smoothed", True, True, 127)):
        cells = []
        for keep in (True, False):
            emulated = smooth_for_int8(model, maxima) if smooth else copy.deepcopy(model)
            for name, linear in encoder_linears(emulated).items():
                if keep and is_ffn_output(name.removesuffix(".linear")):
                    continue
                if weights:
                    linear.weight.data = round_weight(linear.weight.data)
                if levels:
                    linear.register_forward_pre_hook(lambda _m, args, n=levels: (round_activation(args[0], n),))
            cos = (embed_texts(emulated, tok, held_out, normalize=True).vectors * reference).sum(-1)
            cells.append(f"{cos.mean():.4f} ({cos.min():.4f})")
        print(f"{label:34s} {cells[0]:>16s} {cells[1]:>16s}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", choices=("profile", "layers", "smoothing"), nargs="*",
                        default=["profile", "layers"],
                        help="which sections to run (smoothing, about 20 minutes on one thread, only when named)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    directory = packaged_model_dir()
    model, tok = load_model(directory), BertTokenizer.from_pretrained(directory)
    if "profile" in args.only:
        profile_section(model, tok, load_texts(DATA, args.texts), args.threads)
    if "layers" in args.only:
        layers_section(model, tok, load_texts(DATA, args.texts))
    if "smoothing" in args.only:
        smoothing(model, tok)


def profile_section(model, tok, texts: list[str], threads: int) -> None:
    from bertforge.inference.predictor import quantize_int8

    print("Linear layer names:", sorted({n.split(".", 2)[-1] for n, m in model.named_modules()
                                         if isinstance(m, nn.Linear) and n.startswith("layers.")}))
    int8 = quantize_int8(model)
    profiles = {"float32": profile(Predictor(model, tok), model, tok, texts),
                "int8 (quantize_int8)": profile(Predictor(int8, tok), int8, tok, texts)}
    print(f"\n== self CPU seconds per operator family, {len(texts)} texts, {threads} threads ==")
    names = sorted(set().union(*profiles.values()), key=lambda f: -profiles["float32"].get(f, 0.0))
    print(f"{'family':42s} " + " ".join(f"{p:>22s}" for p in profiles))
    for name in names:
        print(f"{name:42s} " + " ".join(f"{profiles[p].get(name, 0.0):22.3f}" for p in profiles))
    print(f"{'total':42s} " + " ".join(f"{sum(profiles[p].values()):22.3f}" for p in profiles))


def layers_section(model, tok, texts: list[str]) -> None:
    from bertforge.inference.predictor import quantize_int8

    int8 = quantize_int8(model)
    reference = embed_texts(model, tok, texts, normalize=True).vectors
    print("\n== mean (min) cosine to the float32 vectors, by which Linear layers are int8 ==")
    for chosen in ("attention projections", "feed-forward in", "feed-forward out", "all Linear"):
        for per_channel in (True, False):
            variant = quantized(model, chosen, per_channel)
            cos = (embed_texts(variant, tok, texts, normalize=True).vectors * reference).sum(-1)
            weights = "per-channel" if per_channel else "per-tensor"
            print(f"{chosen:24s} weights {weights:12s} mean {cos.mean():.4f}  min {cos.min():.4f}")
    cos = (embed_texts(int8, tok, texts, normalize=True).vectors * reference).sum(-1)
    print(f"{'quantize_int8 (default)':24s} {'':20s} mean {np.mean(cos):.4f}  min {np.min(cos):.4f}")


if __name__ == "__main__":
    main()
