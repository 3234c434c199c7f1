"""The `bertforge` command: one sub-command per job, each generated from the job's `run` signature
and docstring by jsonargparse (so `--config job.yaml` works for every job). Nothing else lives here."""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Callable

# sub-command -> "module:function". Modules are imported only when the command line is parsed.
JOBS: dict[str, str] = {
    "demo": "bertforge.demo:run",
    "params": "bertforge.params:run",
    "embed": "bertforge.inference.embed:run",
    "train-vocab": "bertforge.tokenizer_job:run",
}


def _load(target: str) -> Callable:
    module, func = target.split(":")
    return getattr(importlib.import_module(module), func)


def main(argv: list[str] | None = None) -> None:
    from jsonargparse import CLI

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = sys.argv[1:] if argv is None else argv
    # Import only the chosen job's module (start-up stays fast); `bertforge --help` lists them all.
    chosen = [args[0]] if args and args[0] in JOBS else list(JOBS)
    CLI({name: _load(JOBS[name]) for name in chosen}, args=args, as_positional=False)


if __name__ == "__main__":
    main()
