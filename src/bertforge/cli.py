"""The `bertforge` command: one sub-command per job, each generated from the job's `run` signature
and docstring by jsonargparse (so `--config job.yaml` works for every job). Nothing else lives here."""

from __future__ import annotations

import functools
import importlib
import inspect
import logging
import sys
from collections.abc import Callable

from bertforge.errors import BertforgeError, describe_os_error

# sub-command -> "module:function". Modules are imported only when the command line is parsed.
JOBS: dict[str, str] = {
    "demo": "bertforge.demo:run",
    "params": "bertforge.params:run",
    "embed": "bertforge.inference.embed:run",
    "train-vocab": "bertforge.tokenizer_job:run",
    "attention": "bertforge.analysis.attention:run",
    "positions": "bertforge.analysis.positions:run",
    "input-embeddings": "bertforge.analysis.input_embeddings:run",
    "poolings": "bertforge.analysis.poolings:run",
    "feature-ner": "bertforge.analysis.feature_based:run",
    "ablate": "bertforge.analysis.ablate:run",
    "generate": "bertforge.generation:run",
    "finetune": "bertforge.training.finetune:run",
    "evaluate": "bertforge.training.finetune_evaluate:run",
    "predict": "bertforge.training.finetune_predict:run",
    "prepare": "bertforge.data.shards:run",
    "pretraining-examples": "bertforge.analysis.pretraining_examples:run",
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


def _option_names_with_underscores(args: list[str]) -> list[str]:
    """`--text-column x` and `--text_column x` both work: jsonargparse names options after the Python
    parameters (underscores), while dashes are the command-line convention users type."""
    out = []
    for arg in args:
        if arg.startswith("--") and len(arg) > 2:
            name, sep, value = arg[2:].partition("=")
            arg = "--" + name.replace("-", "_") + sep + value
        out.append(arg)
    return out


def main(argv: list[str] | None = None) -> None:
    from jsonargparse import CLI, ArgumentError

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = _option_names_with_underscores(sys.argv[1:] if argv is None else argv)
    # Import only the chosen job's module (start-up stays fast); `bertforge --help` lists them all.
    chosen = [args[0]] if args and args[0] in JOBS else list(JOBS)
    try:
        CLI({name: _load(JOBS[name]) for name in chosen}, args=args, as_positional=False, exit_on_error=False)
    except ArgumentError as exc:  # an unknown option, a value of the wrong type, a missing argument
        where = f"bertforge {chosen[0]} --help" if len(chosen) == 1 else "bertforge --help"
        _fail(f"{exc} (`{where}` lists what is accepted)", 2)
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
