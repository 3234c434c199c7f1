"""PretrainedModel: the base of BertModel and every head class, giving each `from_pretrained` and
`save_pretrained` (the transformers names). The work lives in checkpoint.py; these two methods only delegate,
so a model class has one way to be loaded and saved and no file-format code of its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Self

from torch import nn

from bertforge.config import BertConfig


class PretrainedModel(nn.Module):
    """A model with a BertConfig that loads from and saves to a Hugging Face-format folder."""

    hf_architecture: str  # the config.json `architectures` entry transformers reads
    config: BertConfig

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, **model_kwargs: Any) -> Self:
        """Build this class from a folder, the packaged `all-minilm-l6-v2` or a Hub id, in eval mode.
        `model_kwargs` go to the constructor (e.g. `num_labels=3`); see checkpoint.load_model."""
        from bertforge.checkpoint import load_model  # checkpoint.py imports the model classes

        return load_model(name_or_path, cls, **model_kwargs)

    def save_pretrained(self, directory: str | Path, *, tokenizer: Any = None) -> Path:
        """Write config.json and model.safetensors (and the tokenizer's files) that transformers loads too."""
        from bertforge.checkpoint import save_model

        return save_model(self, directory, tokenizer=tokenizer)
