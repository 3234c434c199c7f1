"""The `bertforge` command: one sub-command per job, each generated from the job's `run` signature
and docstring by jsonargparse (so `--config job.yaml` works for every job). Nothing else lives here."""

from __future__ import annotations

import functools
import importlib
import inspect
import logging
import re
import sys
from collections.abc import Callable
from pathlib import Path

from bertforge.errors import BertforgeError, describe_os_error

# sub-command -> "module:function". Modules are imported only when the command line is parsed.
JOBS: dict[str, str] = {
    "demo": "bertforge.demo:run",
    "params": "bertforge.params:run",
    "embed": "bertforge.inference.embed:run",
    "train-vocab": "bertforge.tokenizer_job:run",
    "attention": "bertforge.analysis.attention:run",
    "positions": "bertforge.analysis.positions:run",
    "poolings": "bertforge.analysis.poolings:run",
    "feature-ner": "bertforge.analysis.feature_based:run",
    "ablate": "bertforge.analysis.ablate:run",
    "generate": "bertforge.generation:run",
    "finetune": "bertforge.training.finetune:run",
    "evaluate": "bertforge.training.finetune_evaluate:run",
    "predict": "bertforge.training.finetune_predict:run",
    "prepare": "bertforge.data.shards:run",
    "pretrain": "bertforge.training.pretrain:run",
    "export": "bertforge.training.export:run",
    "quickstart": "bertforge.quickstart:run",
    "fill-mask": "bertforge.inference.commands:fill_mask",
    "classify": "bertforge.inference.commands:classify",
    "ner": "bertforge.inference.commands:ner",
    "qa": "bertforge.inference.commands:qa",
    "serve": "bertforge.inference.server:run",
    "export-onnx": "bertforge.inference.onnx_export:run",
}


def _load(target: str) -> Callable:
    """The job function, wrapped so that its option values are checked before it runs."""
    from bertforge.options import check_options

    module, func = target.split(":")
    job = getattr(importlib.import_module(module), func)

    @functools.wraps(job)  # jsonargparse reads the signature and docstring through the wrapper
    def checked(*args, **kwargs):
        check_options(inspect.signature(job).bind(*args, **kwargs).arguments)
        return job(*args, **kwargs)

    return checked


def option_names(job: Callable) -> set[str]:
    """The Python names of a job's options."""
    return set(inspect.signature(job).parameters)


def _current_names(args: list[str], accepted: set[str]) -> list[str]:
    """A job's arguments with every option under the name the job knows it by. `--text-column x` and
    `--text_column x` both work (jsonargparse names options after the Python parameters, dashes are what
    users type), and so do names replaced by one name per concept (options.RENAMED), also in --config."""
    from bertforge.options import current_name

    out = []
    for arg in args:
        if arg.startswith("--") and len(arg) > 2:
            name, sep, value = arg[2:].partition("=")
            name = current_name(name, accepted)
            if name == "config" and sep:
                value = _config_text(value, accepted)
            arg = "--" + name + sep + value
        elif out and out[-1] == "--config":
            arg = _config_text(arg, accepted)
        out.append(arg)
    return out


def _config_text(path: str, accepted: set[str]) -> str:
    """A --config YAML file as YAML text with its keys renamed as on the command line (dashes, old names)."""
    import yaml

    from bertforge.errors import OptionError
    from bertforge.options import current_name

    if not Path(path).is_file():
        return path  # jsonargparse reports a missing file, or reads `path` as inline YAML
    try:
        settings = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise OptionError(f"--config {path}: not valid YAML ({exc})") from None
    if not isinstance(settings, dict):
        raise OptionError(f"--config {path}: expected `option: value` lines, found a {type(settings).__name__}")
    return yaml.safe_dump({current_name(str(key), accepted): value for key, value in settings.items()})


def _dashed(text: str) -> str:
    """Option names as users type them: --max_length -> --max-length."""
    return re.sub(r"--[\w.]+", lambda match: match.group().replace("_", "-"), text)


def _parser_class() -> type:
    from jsonargparse import ArgumentParser

    from bertforge.options import RENAMED

    class Parser(ArgumentParser):
        """jsonargparse's parser, showing options with dashes and listing the old names a job still accepts."""

        def format_usage(self) -> str:
            return _dashed(super().format_usage())

        def format_help(self) -> str:
            names = {action.dest for action in self._actions}
            renamed = [f"--{old} (now --{new})" for old, new in RENAMED.items() if new in names and old not in names]
            note = f"\nrenamed options, accepted until the next release: {', '.join(renamed)}\n" if renamed else ""
            return _dashed(super().format_help() + note)

    return Parser


def main(argv: list[str] | None = None) -> None:
    from jsonargparse import CLI, ArgumentError

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = list(sys.argv[1:] if argv is None else argv)
    # Import only the chosen job's module (start-up stays fast); `bertforge --help` lists them all.
    chosen = [args[0]] if args and args[0] in JOBS else list(JOBS)
    try:
        jobs = {name: _load(JOBS[name]) for name in chosen}
        if len(chosen) == 1:
            args = [args[0], *_current_names(args[1:], option_names(jobs[args[0]]))]
        CLI(jobs, args=args, as_positional=False, exit_on_error=False, parser_class=_parser_class())
    except ArgumentError as exc:  # an unknown option, a value of the wrong type, a missing argument
        where = f"bertforge {chosen[0]} --help" if len(chosen) == 1 else "bertforge --help"
        _fail(_dashed(f"{exc} (`{where}` lists what is accepted)"), 2)
    except BertforgeError as exc:  # bad input: one clear line, not a traceback
        _fail(str(exc), 2)
    except OSError as exc:  # a path that cannot be read or written, a full disk: the path and the fix
        _fail(describe_os_error(exc), 1)
    except KeyboardInterrupt:
        _fail("interrupted; every file written so far is complete (pretrain continues with --resume)", 130)
    except (MemoryError, RuntimeError) as exc:
        if not _out_of_memory(exc):
            raise  # a bug: the traceback is for us
        _fail("out of memory; lower --batch-size (or the sequence length), or use a smaller model", 1)


def _out_of_memory(exc: BaseException) -> bool:
    """MemoryError, or torch's OutOfMemoryError (a RuntimeError)."""
    torch = sys.modules.get("torch")
    return isinstance(exc, MemoryError) or (torch is not None and isinstance(exc, torch.cuda.OutOfMemoryError))


def _fail(message: str, status: int) -> None:
    message = " ".join(message.split())  # one line, whatever the message held
    print(f"bertforge: error: {message}", file=sys.stderr)
    raise SystemExit(status) from None


if __name__ == "__main__":
    main()
