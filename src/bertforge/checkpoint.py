"""Hugging Face-format checkpoints: `config.json` + `model.safetensors` (or `pytorch_model.bin`) + vocab.

Every external name — config.json fields and state-dict keys — lives in the tables at the top of this
file and nowhere else. bertforge fuses query/key/value into one [3H, H] matrix; the table maps that
one key to the three Hugging Face keys, concatenated along dim 0 in q, k, v order.
"""

from __future__ import annotations

import json
import logging
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from bertforge.config import BertConfig, ConfigError
from bertforge.files import write_atomic, write_text_atomic
from bertforge.model import BertModel
from bertforge.pretrained import CheckpointError, resolve_model

log = logging.getLogger(__name__)

# ----- config.json <-> BertConfig ---------------------------------------------------------------
CONFIG_KEYS = {  # bertforge field -> config.json field
    "vocab_size": "vocab_size",
    "hidden_size": "hidden_size",
    "num_layers": "num_hidden_layers",
    "num_heads": "num_attention_heads",
    "intermediate_size": "intermediate_size",
    "max_position_embeddings": "max_position_embeddings",
    "type_vocab_size": "type_vocab_size",
    "hidden_dropout": "hidden_dropout_prob",
    "attention_dropout": "attention_probs_dropout_prob",
    "layer_norm_eps": "layer_norm_eps",
    "initializer_range": "initializer_range",
    "pad_token_id": "pad_token_id",
    "classifier_dropout": "classifier_dropout",
}
# Our own field for what Hugging Face cannot express (it sees a sinusoidal table as learned weights).
POSITION_TYPE_KEY = "bertforge_position_embedding_type"
# bertforge position scheme -> Hugging Face `position_embedding_type`. rope and alibi have no Hugging Face
# BERT equivalent: their checkpoints load in bertforge only (transformers would ignore the scheme).
POSITION_TYPES = {"learned": "absolute", "sinusoidal": "absolute", "relative_key": "relative_key",
                  "relative_key_query": "relative_key_query", "none": "none", "rope": "rope", "alibi": "alibi"}

# ----- state-dict keys ----------------------------------------------------------------------------
# bertforge encoder key (inside BertModel) -> Hugging Face key(s) (inside BertModel, no "bert." prefix).
_ENCODER_KEYS: list[tuple[str, tuple[str, ...]]] = [
    ("embeddings.word_embeddings.weight", ("embeddings.word_embeddings.weight",)),
    ("embeddings.position_embeddings.weight", ("embeddings.position_embeddings.weight",)),
    ("embeddings.token_type_embeddings.weight", ("embeddings.token_type_embeddings.weight",)),
    ("embeddings.layer_norm.weight", ("embeddings.LayerNorm.weight",)),
    ("embeddings.layer_norm.bias", ("embeddings.LayerNorm.bias",)),
    ("pooler.dense.weight", ("pooler.dense.weight",)),
    ("pooler.dense.bias", ("pooler.dense.bias",)),
]
_LAYER_KEYS: list[tuple[str, tuple[str, ...]]] = [  # {i} = layer index
    ("layers.{i}.attention.qkv.weight", tuple(f"encoder.layer.{{i}}.attention.self.{p}.weight"
                                              for p in ("query", "key", "value"))),
    ("layers.{i}.attention.qkv.bias", tuple(f"encoder.layer.{{i}}.attention.self.{p}.bias"
                                            for p in ("query", "key", "value"))),
    ("layers.{i}.attention.output.weight", ("encoder.layer.{i}.attention.output.dense.weight",)),
    ("layers.{i}.attention.output.bias", ("encoder.layer.{i}.attention.output.dense.bias",)),
    ("layers.{i}.attention_norm.weight", ("encoder.layer.{i}.attention.output.LayerNorm.weight",)),
    ("layers.{i}.attention_norm.bias", ("encoder.layer.{i}.attention.output.LayerNorm.bias",)),
    ("layers.{i}.intermediate.weight", ("encoder.layer.{i}.intermediate.dense.weight",)),
    ("layers.{i}.intermediate.bias", ("encoder.layer.{i}.intermediate.dense.bias",)),
    ("layers.{i}.output.weight", ("encoder.layer.{i}.output.dense.weight",)),
    ("layers.{i}.output.bias", ("encoder.layer.{i}.output.dense.bias",)),
    ("layers.{i}.output_norm.weight", ("encoder.layer.{i}.output.LayerNorm.weight",)),
    ("layers.{i}.output_norm.bias", ("encoder.layer.{i}.output.LayerNorm.bias",)),
    ("layers.{i}.attention.distance_embedding.weight", ("encoder.layer.{i}.attention.self.distance_embedding.weight",)),
]
# bertforge head key (outside `bert`) -> Hugging Face key.
HEAD_KEYS: dict[str, str] = {
    "mlm.dense.weight": "cls.predictions.transform.dense.weight",
    "mlm.dense.bias": "cls.predictions.transform.dense.bias",
    "mlm.layer_norm.weight": "cls.predictions.transform.LayerNorm.weight",
    "mlm.layer_norm.bias": "cls.predictions.transform.LayerNorm.bias",
    "mlm.bias": "cls.predictions.bias",
    "nsp.weight": "cls.seq_relationship.weight",
    "nsp.bias": "cls.seq_relationship.bias",
    "classifier.weight": "classifier.weight",
    "classifier.bias": "classifier.bias",
    "span.weight": "qa_outputs.weight",
    "span.bias": "qa_outputs.bias",
}
ENCODER_PREFIX = "bert."  # Hugging Face task models keep the encoder under this prefix
# Keys that carry no information of their own: tied copies and buffers.
_IGNORED_KEYS = re.compile(r"(^|\.)(position_ids|cls\.predictions\.decoder\.(weight|bias))$")
# Checkpoints converted from TensorFlow name LayerNorm parameters gamma/beta.
_LEGACY_SUFFIXES = {".gamma": ".weight", ".beta": ".bias"}

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


@dataclass
class LoadReport:
    """What a load did besides copying weights one to one."""

    newly_initialised: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)


# ----- key mapping --------------------------------------------------------------------------------
def encoder_key_map(num_layers: int) -> dict[str, tuple[str, ...]]:
    """bertforge BertModel key -> Hugging Face BertModel key(s), for every layer."""
    mapping = dict(_ENCODER_KEYS)
    for i in range(num_layers):
        for ours, theirs in _LAYER_KEYS:
            mapping[ours.format(i=i)] = tuple(t.format(i=i) for t in theirs)
    return mapping


def _key_map(model: nn.Module) -> dict[str, tuple[str, ...]]:
    """Every persistent key of `model` -> the Hugging Face key(s) for the same tensor (prefixed form)."""
    encoder = encoder_key_map(model.config.num_layers)
    prefix = "" if isinstance(model, BertModel) else ENCODER_PREFIX
    mapping: dict[str, tuple[str, ...]] = {}
    for key in model.state_dict():
        if key.startswith(prefix) and key[len(prefix):] in encoder:
            mapping[key] = tuple(ENCODER_PREFIX + k for k in encoder[key[len(prefix):]])
        elif key in HEAD_KEYS:
            mapping[key] = (HEAD_KEYS[key],)
        else:
            raise CheckpointError(f"no Hugging Face name for parameter {key!r}; add it to checkpoint.HEAD_KEYS")
    return mapping


def _canonical_hf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename legacy keys and give a bare BertModel state dict the `bert.` prefix task models use."""
    renamed = {}
    for key, tensor in state.items():
        for old, new in _LEGACY_SUFFIXES.items():
            if key.endswith(old):
                key = key[: -len(old)] + new
        renamed[key] = tensor
    if not any(k.startswith(ENCODER_PREFIX) for k in renamed):
        renamed = {(ENCODER_PREFIX + k if k.split(".")[0] in ("embeddings", "encoder", "pooler") else k): v
                   for k, v in renamed.items()}
    return renamed


def to_hf_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights under Hugging Face key names (contiguous copies, ready for safetensors)."""
    state = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    for ours, theirs in _key_map(model).items():
        for name, part in zip(theirs, state[ours].chunk(len(theirs), dim=0), strict=True):
            out[name] = part.detach().contiguous().clone()
    bert = model if isinstance(model, BertModel) else model.bert
    position_key = ENCODER_PREFIX + "embeddings.position_embeddings.weight"
    if model.config.position_embedding_type == "sinusoidal":
        # Hugging Face has no fixed table: store it as "learned" weights so its BertModel gives our outputs.
        out[position_key] = bert.embeddings.position_table().clone()
    elif position_key not in out:
        # Hugging Face BERT always has this matrix (unused for relative positions): a zero table keeps
        # its loading free of "missing key" warnings.
        out[position_key] = torch.zeros(model.config.max_position_embeddings, model.config.hidden_size)
    if isinstance(model, BertModel):
        out = {k[len(ENCODER_PREFIX):]: v for k, v in out.items()}
    return out


def load_hf_state_dict(model: nn.Module, state: dict[str, torch.Tensor], *, source: str = "state dict") -> LoadReport:
    """Copy Hugging Face-named weights into `model`. Shapes are checked key by key; missing encoder
    weights are an error, missing head (and pooler) weights stay freshly initialised (reported)."""
    state = _canonical_hf(state)
    report = LoadReport()
    used: set[str] = set()
    ours_state = model.state_dict()
    new_state: dict[str, torch.Tensor] = {}
    missing_encoder: list[str] = []
    for ours, theirs in _key_map(model).items():
        absent = [t for t in theirs if t not in state]
        if absent:
            # The pooler is trained only by NSP: an MLM-only or left-to-right checkpoint has none, and a task
            # model built on it starts with a fresh one (reported), as transformers does.
            fresh = ours in HEAD_KEYS or ours.removeprefix("bert.").startswith("pooler.")
            (report.newly_initialised if fresh else missing_encoder).append(ours)
            continue
        tensor = torch.cat([state[t] for t in theirs], dim=0) if len(theirs) > 1 else state[theirs[0]]
        expected = tuple(ours_state[ours].shape)
        if tuple(tensor.shape) != expected:
            raise CheckpointError(
                f"{source}: shape mismatch for {' + '.join(theirs)}: checkpoint has {tuple(tensor.shape)}, "
                f"the model expects {expected} (bertforge key {ours!r}); the config.json does not match "
                "the weights, or the weights belong to another model"
            )
        new_state[ours] = tensor
        used.update(theirs)
    if missing_encoder:
        shown = ", ".join(missing_encoder[:5]) + (" …" if len(missing_encoder) > 5 else "")
        raise CheckpointError(
            f"{source}: {len(missing_encoder)} encoder weights are missing ({shown}); "
            "this is not a complete BERT checkpoint"
        )
    model.load_state_dict({**ours_state, **new_state})
    report.ignored = sorted(k for k in state if k not in used and not _IGNORED_KEYS.search(k))
    if model.config.position_embedding_type != "learned":
        report.ignored = [k for k in report.ignored if not k.endswith("embeddings.position_embeddings.weight")]
    return report


# ----- config -------------------------------------------------------------------------------------
def config_from_hf(values: dict, *, source: str = "config.json") -> BertConfig:
    """A BertConfig from Hugging Face config.json fields, refusing what bertforge cannot reproduce."""
    model_type = values.get("model_type", "bert")
    if model_type != "bert":
        raise CheckpointError(f"{source}: model_type is {model_type!r}; bertforge loads BERT checkpoints only")
    act = values.get("hidden_act", "gelu")
    if act != "gelu":
        raise CheckpointError(f"{source}: hidden_act {act!r} is not supported (BERT uses exact 'gelu')")
    position_type = values.get(POSITION_TYPE_KEY) or values.get("position_embedding_type", "absolute")
    position_type = "learned" if position_type == "absolute" else position_type
    if position_type not in POSITION_TYPES:
        raise CheckpointError(f"{source}: position_embedding_type {position_type!r} is not supported; "
                              f"bertforge reads {', '.join(sorted(set(POSITION_TYPES.values())))}")
    kwargs = {ours: values[theirs] for ours, theirs in CONFIG_KEYS.items() if values.get(theirs) is not None}
    kwargs["position_embedding_type"] = position_type
    try:
        return BertConfig(**kwargs)
    except ConfigError as exc:
        raise CheckpointError(f"{source}: {exc}") from exc


def config_to_hf(config: BertConfig, architecture: str) -> dict:
    values = {"architectures": [architecture], "model_type": "bert", "hidden_act": "gelu",
              "position_embedding_type": POSITION_TYPES[config.position_embedding_type]}
    values.update({theirs: getattr(config, ours) for ours, theirs in CONFIG_KEYS.items()})
    if config.position_embedding_type not in ("learned", "relative_key", "relative_key_query"):
        values[POSITION_TYPE_KEY] = config.position_embedding_type
    return values


# ----- files --------------------------------------------------------------------------------------
def read_config(directory: str | Path) -> dict:
    path = Path(directory) / "config.json"
    if not Path(directory).is_dir():
        raise CheckpointError(f"{directory}: checkpoint directory not found")
    if not path.is_file():
        raise CheckpointError(f"{path}: missing; a checkpoint directory needs config.json beside its weights")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})") from exc
    except UnicodeDecodeError as exc:
        raise CheckpointError(f"{path}: byte {exc.start} is not UTF-8; the file is damaged or not a "
                              "config.json") from None


def read_weights(directory: str | Path) -> tuple[dict[str, torch.Tensor], Path]:
    """The state dict from model.safetensors, or pytorch_model.bin read with weights_only=True."""
    directory = Path(directory)
    for name in WEIGHT_FILES:
        path = directory / name
        if not path.is_file():
            continue
        try:
            if name.endswith(".safetensors"):
                return load_file(path), path
            # weights_only: tensors only, never unpickle arbitrary objects from a downloaded file.
            return torch.load(path, map_location="cpu", weights_only=True), path
        except pickle.UnpicklingError as exc:
            raise CheckpointError(f"{path}: cannot be read: it holds Python objects besides tensors, which "
                                  "bertforge refuses to unpickle; convert it to model.safetensors in a trusted "
                                  "environment") from exc
        except (SafetensorError, RuntimeError, EOFError, OSError, ValueError) as exc:
            raise CheckpointError(f"{path}: cannot be read ({exc}); the file is truncated or corrupt — "
                                  "copy or download it again") from exc
    raise CheckpointError(f"{directory}: no weights file; expected one of {', '.join(WEIGHT_FILES)}")


def load_model(name_or_path: str | Path, model_class: type[nn.Module] = BertModel, **model_kwargs) -> nn.Module:
    """Build `model_class` from a Hugging Face-format directory and load its weights (eval mode).

    `name_or_path`: a folder, the packaged `all-minilm-l6-v2` or a Hub id (pretrained.resolve_model).
    Works across layouts: a BertModel from a BertForPreTraining checkpoint (heads ignored), a task
    model from a bare encoder (head freshly initialised and reported). Labels saved as id2label are
    restored for classification models unless given.
    """
    directory = resolve_model(name_or_path)
    values = read_config(directory)
    config = config_from_hf(values, source=str(directory / "config.json"))
    if "labels" in _init_params(model_class) and "labels" not in model_kwargs and "num_labels" not in model_kwargs:
        id2label = values.get("id2label")
        if id2label and values.get("architectures", [None])[0] == model_class.hf_architecture:
            model_kwargs["labels"] = [id2label[str(i)] for i in range(len(id2label))]
    same_head = values.get("architectures", [None])[0] == model_class.hf_architecture
    if values.get("problem_type") and same_head and "problem_type" in _init_params(model_class):
        model_kwargs.setdefault("problem_type", values["problem_type"])  # multi-label: sigmoid, not softmax
    model = model_class(config, **model_kwargs)
    state, path = read_weights(directory)
    check_vocab(directory, config)
    report = load_hf_state_dict(model, state, source=str(path))
    if report.newly_initialised:
        log.warning("%s: not in the checkpoint, freshly initialised: %s", directory,
                    ", ".join(report.newly_initialised))
    if report.ignored:
        log.info("%s: weights not used by %s: %s", directory, model_class.__name__, ", ".join(report.ignored))
    return model.eval()


def check_vocab(directory: Path, config: BertConfig) -> None:
    """vocab.txt must match the embedding matrix: more tokens than rows would index past it, fewer means
    the vocabulary belongs to other weights (every id would name another token). Only rounding the rows up
    to a multiple of 64 for speed, as some checkpoints do, may leave a few rows without a token."""
    vocab = directory / "vocab.txt"
    if not vocab.is_file():
        return
    data = vocab.read_bytes()
    size = data.count(b"\n") + (not data.endswith(b"\n") and len(data) > 0)  # lines, the last unterminated
    padded = size < config.vocab_size and config.vocab_size % 64 == 0 and config.vocab_size - size < 64
    if size != config.vocab_size and not padded:
        relation = "more" if size > config.vocab_size else "fewer"
        raise CheckpointError(
            f"{vocab}: {size} tokens, {relation} than the {config.vocab_size} rows of the embedding matrix "
            "(config.json vocab_size); the vocabulary does not belong to these weights — use the vocab.txt "
            "saved with them"
        )


def save_model(model: nn.Module, directory: str | Path, *, tokenizer=None, extra_config: dict | None = None) -> Path:
    """Write config.json, model.safetensors (and the tokenizer files) so that `transformers`
    `AutoModel`/`BertFor*.from_pretrained(directory)` loads them. Each file is written atomically."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    values = config_to_hf(model.config, model.hf_architecture)
    values.update(getattr(model, "hf_config", {}))
    labels = getattr(model, "labels", None)
    if getattr(model, "num_labels", None) is not None:
        labels = labels or [f"LABEL_{i}" for i in range(model.num_labels)]
        values["id2label"] = {str(i): label for i, label in enumerate(labels)}
        values["label2id"] = {label: i for i, label in enumerate(labels)}
        if model.num_labels == 1:
            values["problem_type"] = "regression"
    values.update(extra_config or {})
    state = to_hf_state_dict(model)
    write_atomic(directory / "model.safetensors", lambda tmp: save_file(state, str(tmp), metadata={"format": "pt"}))
    write_text_atomic(directory / "config.json", json.dumps(values, indent=2, sort_keys=True) + "\n")
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
    return directory


def _init_params(cls: type) -> set[str]:
    import inspect

    return set(inspect.signature(cls.__init__).parameters)
