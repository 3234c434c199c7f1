"""`bertforge export`: a pre-training checkpoint -> a Hugging Face-format `BertForPreTraining` folder
(config.json, model.safetensors, vocab.txt, tokenizer.json) that `transformers` loads as it is."""

from __future__ import annotations

from pathlib import Path

from bertforge.config import BertConfig
from bertforge.heads import BertForPreTraining
from bertforge.tokenizer import BertTokenizer
from bertforge.training.checkpointing import load_checkpoint


def load_pretraining_checkpoint(checkpoint: str | Path) -> BertForPreTraining:
    """The model of a training checkpoint (a file, a run folder or its checkpoints folder: the latest)."""
    state = load_checkpoint(checkpoint)
    model = BertForPreTraining(BertConfig.from_dict(state["model_config"]), nsp=state["nsp"])
    model.load_state_dict(state["model"])
    return model.eval()


def _run_folder(checkpoint: Path) -> Path:
    """The run folder of a checkpoint path (where pretrain saved tokenizer/)."""
    for folder in (checkpoint, *checkpoint.parents):
        if (folder / "tokenizer").is_dir():
            return folder
    raise FileNotFoundError(f"{checkpoint}: no tokenizer/ folder beside it or above it; pass --vocab DIR")


def run(checkpoint: Path, output_dir: Path, vocab: Path | None = None) -> Path:
    """Write a pre-training checkpoint as a Hugging Face-format BertForPreTraining folder.

    Args:
        checkpoint: A checkpoint file (step-N.pt), or a run folder (its latest checkpoint).
        output_dir: Where to write config.json, model.safetensors and the vocabulary.
        vocab: The tokenizer folder; by default the run's own tokenizer/ folder.
    """
    from bertforge.checkpoint import save_model

    checkpoint = Path(checkpoint)
    model = load_pretraining_checkpoint(checkpoint)
    tokenizer = BertTokenizer.from_pretrained(Path(vocab) if vocab else _run_folder(checkpoint) / "tokenizer")
    save_model(model, output_dir, tokenizer=tokenizer)
    print(f"wrote {output_dir} (transformers: BertForPreTraining.from_pretrained('{output_dir}'))")
    return Path(output_dir)
