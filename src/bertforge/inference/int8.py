"""int8 dynamic quantisation for CPU inference, with SmoothQuant activation smoothing (Xiao et al. 2022).

torch's dynamic int8 Linear quantises its weights once (here per output channel) and its input activations
per call with one scale for the whole [N, C] tensor, in 7 bits on x86 (reduce_range: the AVX2 kernels sum
pairs of u8×s8 products in int16, which 8-bit activations could overflow). A few input channels of a BERT
layer carry values tens of times larger than the rest (the outliers), so that one scale leaves the other
channels a handful of levels. Smoothing moves the outliers into the weights, where per-channel quantisation
absorbs them (paper §4):

    per input channel j:  s_j = max|X_j|^alpha / max|W_:,j|^(1 - alpha),   X' = X / s,   W' = W * s

X'W'ᵀ = XWᵀ exactly, so in float32 a smoothed model computes the same function. max|X_j| comes from
calibration: the encoder runs once over some sentences (`activation_maxima`; the Predictor uses the
built-in CALIBRATION_TEXTS, which measured as good as 300 real sentences).

Where the 1/s goes. In a pre-LayerNorm Transformer (OPT, LLaMA) it folds into the LayerNorm before Q/K/V and
the feed-forward input for free. BERT is post-LayerNorm: that LayerNorm's output is also the residual stream
(`h + FFN(h)`), so folding 1/s into it would scale the residual too and change the model; and the
feed-forward output's input comes through GELU, which no per-channel scale passes. So every smoothed Linear
multiplies its input by 1/s explicitly (`SmoothedLinear`): one elementwise pass over [N, C] beside a matmul
of [N, C] × [C, C_out].

On all-MiniLM-L6-v2 smoothing (alpha 0.75) raises the mean cosine to the float32 sentence vectors from 0.986
to 0.998; what is left is mostly the 7-bit activations (docs/inference.md, benchmarks/profile_int8.py).
Shapes: N = tokens, C = input channels of a Linear, C_out = its output channels.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence

import torch
from torch import nn

from bertforge.errors import OptionError

# Sentences written for calibration (no data set ships with bertforge): plain prose of mixed length and topic,
# questions, numbers, names and punctuation, so that the outlier channels a model shows on real text show here.
CALIBRATION_TEXTS = (
    "The committee will meet again on Thursday to review the budget.",
    "A man is playing a guitar on the street corner.",
    "How many people live in the capital of France?",
    "The film was beautifully shot, but the story never comes alive.",
    "She moved to London in 1998 and worked as a nurse for twenty years.",
    "Heavy rain is expected across the north of the country tonight.",
    "Two dogs are running through a field of tall grass.",
    "The company reported a net loss of $4.2 million in the third quarter.",
    "What time does the last train to Boston leave?",
    "I loved every minute of it!",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "The bridge was closed after inspectors found cracks in two of its supports.",
    "He said the results were \"encouraging\" but warned that more tests were needed.",
    "A woman is slicing an onion in the kitchen.",
    "The river rises in the mountains and flows south for about 400 kilometres before reaching the sea.",
    "Please send me the report by Friday afternoon.",
    "It is a dull, lifeless and utterly forgettable movie.",
    "The museum holds more than 2,000 paintings, most of them from the 19th century.",
    "Children were playing football in the park while their parents watched.",
    "Why did the Roman Empire decline in the west but survive in the east?",
    "Prices of oil fell sharply on Monday after the announcement.",
    "The new law requires all restaurants to display calorie counts on their menus.",
    "A cat is sleeping on a warm windowsill.",
    "Researchers at the university have developed a cheaper way to produce hydrogen.",
    "The team lost 3-1 in the final minutes of the match.",
    "My grandmother taught me how to bake bread when I was seven.",
    "Elections were held in March, and the opposition won a narrow majority.",
    "The algorithm sorts the list in O(n log n) time.",
    "Is there a pharmacy open near here on Sundays?",
    "The orchestra performed Beethoven's ninth symphony to a sold-out hall.",
    "Funny, touching and smart, this is the best comedy of the year.",
    "Volcanic ash disrupted flights across Europe for almost a week.",
    "The patient was given antibiotics and discharged two days later.",
    "A group of tourists is taking photographs in front of the cathedral.",
    "In 1969, Apollo 11 landed the first humans on the Moon.",
    "The password must contain at least eight characters, including a number.",
    "Farmers say the drought has destroyed nearly half of this year's wheat harvest.",
    "The actors do their best with a script that gives them little to work with.",
    "He opened the door, looked around the empty room and sighed.",
    "The central bank raised interest rates by a quarter of a percentage point.",
    "Where can I find the documentation for the new version?",
    "Thousands of people marched through the city centre on Saturday.",
    "The novel follows three generations of a family in rural Ireland.",
    "A young boy is jumping into a swimming pool.",
    "The software update fixes a bug that caused the application to crash on start-up.",
    "Scientists warn that sea levels could rise by up to a metre by 2100.",
    "The restaurant's service was slow, and the soup arrived cold.",
    "Mount Everest, at 8,849 metres, is the highest mountain above sea level.",
    "They signed a three-year contract worth about 12 million euros.",
    "Can you recommend a good book about the history of mathematics?",
    "The village lies on the eastern bank of the river, about ten miles from the coast.",
    "A chef is preparing sushi behind the counter.",
    "Police have arrested two men in connection with the robbery.",
    "Despite its flaws, the documentary raises important questions about privacy.",
    "The treaty was signed in Paris in 1783, ending the war.",
    "Water boils at 100 degrees Celsius at sea level.",
    "The school will close early on Wednesday because of the storm.",
    "An old man is feeding pigeons in the square.",
    "Shares in the carmaker rose 7% after it beat analysts' forecasts.",
    "The plot is predictable, yet the performances are wonderful.",
    "The protein folds into a shape that lets it bind to the receptor.",
    "Who wrote the music for the opening ceremony?",
    "After the war, the city was rebuilt according to a new plan with wide avenues and parks.",
    "ok thanks, see you tomorrow",
)


class SmoothedLinear(nn.Module):
    """`linear(x / s)` where linear's weight columns were multiplied by s: the same function as the original
    Linear, with the activations' outlier channels shrunk before they reach (a quantised) `linear`.

    per_token_scales: also divide each token's row by its own largest value and multiply the output row back
    (the bias, moved out of `linear`, is added after). Exact in float32; to an int8 Linear, whose activations
    share one scale per batch, every token then spans the whole int8 range: per-token activation scales,
    which torch's dynamic int8 Linear does not offer.
    """

    def __init__(self, linear: nn.Linear, scale: torch.Tensor, *, per_token_scales: bool = False) -> None:
        super().__init__()
        with torch.no_grad():
            linear.weight.mul_(scale)  # [C_out, C] * [C]: column j times s_j
        self.register_buffer("inv_scale", 1.0 / scale)  # [C]
        self.per_token_scales = per_token_scales
        bias = None
        if per_token_scales and linear.bias is not None:
            bias, linear.bias = linear.bias.detach().clone(), None
        self.register_buffer("bias", bias)  # [C_out] or None
        self.linear = linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [..., C] -> [..., C_out]
        x = x * self.inv_scale
        if not self.per_token_scales:
            return self.linear(x)
        peak = x.abs().amax(-1, keepdim=True).clamp_min(1e-12)  # [..., 1]
        out = self.linear(x / peak) * peak
        return out if self.bias is None else out + self.bias


def encoder_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """Every nn.Linear inside the encoder's layers, by its name in `model` (Q/K/V, attention output,
    feed-forward in and out of each layer; not the pooler or a task head)."""
    from bertforge.inference.predictor import encoder_of

    layers = encoder_of(model).layers
    prefix = next(name for name, module in model.named_modules() if module is layers)  # "layers" or "bert.layers"
    return {f"{prefix}.{name}": module for name, module in layers.named_modules() if isinstance(module, nn.Linear)}


@torch.no_grad()
def activation_maxima(model: nn.Module, tokenizer, texts: Sequence[str], *,
                      max_length: int = 256) -> dict[str, torch.Tensor]:
    """max |x_j| per input channel j of every encoder Linear (`encoder_linears`), over all tokens of `texts`
    run through the float32 model by a Predictor: packed, so padding never enters the maxima (models with
    relative or ALiBi positions run padded, and their padding counts too)."""
    from bertforge.inference.predictor import Predictor

    if not texts:
        raise OptionError("int8 calibration: give at least one text (calibration texts are empty)")
    maxima: dict[str, torch.Tensor] = {}

    def record(name: str):
        def hook(_module, inputs) -> None:
            seen = inputs[0].detach().abs().flatten(0, -2).amax(0).float()  # [C]
            maxima[name] = seen if name not in maxima else torch.maximum(maxima[name], seen)
        return hook

    handles = [linear.register_forward_pre_hook(record(name)) for name, linear in encoder_linears(model).items()]
    try:
        predictor = Predictor(model, tokenizer, max_length=max_length)
        for _ in predictor.run(predictor.tokenize(texts)):
            pass
    finally:
        for handle in handles:
            handle.remove()
    return maxima


def smoothing_scale(act_max: torch.Tensor, weight: torch.Tensor, alpha: float) -> torch.Tensor:
    """SmoothQuant's s_j = max|X_j|^alpha / max|W_:,j|^(1-alpha) for weight [C_out, C] -> [C]. alpha = 0 leaves
    the activations alone, 1 moves all their range into the weights; a channel never seen active keeps s = 1."""
    weight_max = weight.detach().abs().amax(0).float().clamp_min(1e-5)  # [C]
    scale = act_max.clamp_min(1e-5).pow(alpha) / weight_max.pow(1 - alpha)
    return torch.where(act_max > 0, scale, torch.ones_like(scale)).to(weight.dtype)


def smooth_for_int8(model: nn.Module, maxima: dict[str, torch.Tensor], *, alpha: float = 0.75,
                    per_token_scales: bool = False) -> nn.Module:
    """A copy of `model` whose encoder Linears named in `maxima` (from `activation_maxima` on this model) are
    SmoothedLinear: in float32 the copy computes the same outputs; quantised, it loses far less.
    alpha 0.75 (SmoothQuant's paper uses 0.5) measured best on all-MiniLM-L6-v2 (docs/inference.md)."""
    if not 0.0 <= alpha <= 1.0:
        raise OptionError(f"int8 smoothing alpha={alpha}: choose a value from 0 to 1 (default 0.75)")
    model = copy.deepcopy(model)
    linears = encoder_linears(model)
    unknown = sorted(set(maxima) - set(linears))
    if unknown:
        raise OptionError(f"int8 smoothing: {unknown[0]} is not an encoder Linear of this model; compute the "
                          f"maxima with activation_maxima on this same model")
    for name, act_max in maxima.items():
        parent_name, _, attribute = name.rpartition(".")
        linear = linears[name]
        scale = smoothing_scale(act_max, linear.weight, alpha)
        setattr(model.get_submodule(parent_name), attribute,
                SmoothedLinear(linear, scale, per_token_scales=per_token_scales))
    return model


def smoothed_int8(model: nn.Module, tokenizer, *, texts: Sequence[str] = CALIBRATION_TEXTS) -> nn.Module:
    """The int8 model every inference path runs (`--precision int8`: the Predictor, and so the pipelines and
    the server; `bertforge evaluate` and `predict`): a smoothed, dynamically quantised CPU copy of `model`,
    calibrated on `texts` encoded by the model's `tokenizer`.

    The default texts are the built-in CALIBRATION_TEXTS, not the caller's data: a text's output must not depend
    on which texts came first or were scored with it (docs/inference.md measures both calibrations)."""
    return quantize_int8(model, maxima=activation_maxima(model, tokenizer, texts))


def is_ffn_output(name: str) -> bool:
    """Whether `name` is a feed-forward output projection (`layers.i.output`, not `attention.output`)."""
    return name.endswith(".output") and ".attention." not in name


def quantize_int8(model: nn.Module, *, maxima: dict[str, torch.Tensor] | None = None, alpha: float = 0.75,
                  keep_ffn_output: bool = True, per_token_scales: bool = False) -> nn.Module:
    """A copy of `model` whose nn.Linear layers are torch's dynamic int8 Linear (CPU only), weights per
    output channel.

    maxima: calibrated activation maxima (`activation_maxima`); given, the encoder Linears that become int8
        are smoothed first (`smooth_for_int8` with `alpha`). Without them the model is quantised as it is.
    keep_ffn_output: keep the feed-forward output projections (`layers.i.output`) float32. Their GELU inputs
        carry the largest outliers, which a channel that calibration saw nearly idle turns into new ones once
        smoothed; int8 there costs all-MiniLM-L6-v2 0.006-0.023 of mean cosine, smoothed or not.
    per_token_scales: with maxima, every smoothed Linear scales each token to the full int8 range
        (SmoothedLinear); two more elementwise passes per Linear.
    The measurements behind these defaults are in docs/inference.md.
    """
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    if per_token_scales and maxima is None:
        raise OptionError("int8 per_token_scales works on smoothed Linears: give calibrated maxima too "
                          "(activation_maxima)")
    if maxima is None:
        model = copy.deepcopy(model)
    else:
        smoothed = {name: found for name, found in maxima.items() if not (keep_ffn_output and is_ffn_output(name))}
        model = smooth_for_int8(model, smoothed, alpha=alpha, per_token_scales=per_token_scales)
    model = model.cpu().eval()
    inner = {f"{name}.linear" for name, module in model.named_modules() if isinstance(module, SmoothedLinear)}
    chosen = {}
    for name, module in model.named_modules():
        role = name.removesuffix(".linear") if name in inner else name  # a SmoothedLinear's inner Linear
        if isinstance(module, nn.Linear) and not (keep_ffn_output and is_ffn_output(role)):
            chosen[name] = per_channel_dynamic_qconfig  # the 1/s multiply of a SmoothedLinear stays float32
    with warnings.catch_warnings():  # torch announces the move of this API to torchao
        warnings.simplefilter("ignore")
        return quantize_dynamic(model, chosen, dtype=torch.qint8)
