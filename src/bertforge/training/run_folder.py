"""A training run's folder: what may be written into it, and where a resumed run starts.

The rules, checked before any compute:
- an empty or new folder starts a run;
- a folder that already holds something needs `--resume` (continue the run in it) or `--overwrite`
  (delete that run's files first); without either it is refused, so a rerun never silently replaces a
  finished model, its metrics or its checkpoints;
- `--overwrite` never deletes an input: data or initial weights inside the folder are refused;
- temporaries left by a process killed mid-save (`.NAME.xxxxxxxx.tmp`, see `files.py`) are removed.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from bertforge.config import BertConfig
from bertforge.errors import OptionError, OutputError
from bertforge.files import check_output_dir, is_inside, remove_stale_temporaries
from bertforge.options import check_options
from bertforge.training.checkpointing import resume_checkpoint

log = logging.getLogger(__name__)

# What `pretrain` writes into its folder (and `--overwrite` deletes).
PRETRAIN_FILES = ("checkpoints", "model", "tensorboard", "tokenizer", "metrics.jsonl", "curves.png", "config.json")


def open_run(cfg) -> Path | None:
    """Check a `PretrainConfig` and its folder before anything is computed; clear the folder for
    `--overwrite`. Returns the checkpoint to resume from (None: start at step 0)."""
    check_options(cfg.options())
    check_sequence_length(cfg.corpus.max_length, cfg.model.preset, cfg.model.model_overrides or {})
    job = cfg.job
    # Under torchrun only rank 0 applies the folder rules: the others may start after it began writing.
    if int(os.environ.get("RANK", "0")) == 0:
        check_run_folder(job.output_dir, resume=job.resume, overwrite=job.overwrite,
                         inputs=(cfg.corpus.data, cfg.model.init_from), run_files=PRETRAIN_FILES)
    return resume_checkpoint(job.output_dir / "checkpoints") if job.resume else None


def check_sequence_length(max_length: int, preset: str, model_overrides: dict) -> None:
    """The position-embedding table bounds the length: refuse a longer one before the first step would
    allocate attention scores that grow with its square (100,000 tokens: tens of GB)."""
    limit = BertConfig.from_preset(preset, **model_overrides).max_position_embeddings
    if max_length > limit:
        raise OptionError(f"--max-length {max_length}: longer than the model's {limit} positions "
                          f"(max_position_embeddings of preset {preset!r}); use at most {limit}, or give the model "
                          "more positions with --model-overrides '{max_position_embeddings: N}' (memory grows with "
                          "the square of the length)")


def check_run_folder(folder: str | Path, *, resume: bool | None, overwrite: bool, inputs: Iterable[Path | None] = (),
                     run_files: Iterable[str] | None = None, clear: bool = True) -> None:
    """Apply the rules above to `folder`. `resume=None`: the job cannot resume (its message offers only
    --overwrite). `run_files` are the entries `--overwrite` deletes (None: all of the folder's contents);
    `clear=False` checks without changing anything."""
    folder = check_output_dir(folder, option="--output-dir")
    if resume and overwrite:
        raise OptionError("--resume and --overwrite: choose one (continue the run, or replace it)")
    if clear:
        for place in (folder, *(p for p in folder.iterdir() if p.is_dir())) if folder.is_dir() else ():
            for removed in remove_stale_temporaries(place):
                log.info("removed %s, left by a save that was interrupted", removed)
    present = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    if not present or resume:
        return
    if not overwrite:
        shown = ", ".join(present[:4]) + (", ..." if len(present) > 4 else "")
        resume_it = "pass --resume to continue that run, " if resume is not None else "pass "
        raise OutputError(f"--output-dir {folder}: already holds {shown}; {resume_it}--overwrite to replace it, "
                          "or choose a new folder")
    doomed = [folder / name for name in (run_files if run_files is not None else present)]
    for source in inputs:
        if source is not None and any(is_inside(source, d) or is_inside(d, source) for d in doomed):
            raise OutputError(f"--overwrite {folder}: would delete the input {source}; move it out of the way or "
                              "choose another output folder")
    if not clear:
        return
    for path in doomed:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
    log.info("--overwrite: deleted the earlier run in %s", folder)
