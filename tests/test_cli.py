"""The `bertforge` command: every job resolves and documents itself; the demo finds real neighbours."""

from __future__ import annotations

import inspect
import sys

import pytest

from bertforge.cli import JOBS, _load, _option_names_with_underscores, main


@pytest.mark.parametrize("name", list(JOBS))
def test_every_job_is_importable_and_documented(name: str) -> None:
    job = _load(JOBS[name])
    doc = inspect.getdoc(job) or ""
    assert doc.strip(), f"{name}: the job's docstring is its --help"
    params = [p for p in inspect.signature(job).parameters if p not in ("self",)]
    for param in params:
        assert param in doc, f"{name}: parameter {param!r} is not documented under Args:"


def test_top_level_help_lists_every_job(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for name in JOBS:
        assert name in out


def test_dashes_and_underscores() -> None:
    assert _option_names_with_underscores(["embed", "--text-column", "a-b", "--max-length=5", "-h"]) == [
        "embed", "--text_column", "a-b", "--max_length=5", "-h"]


def test_params_command(capsys) -> None:
    main(["params", "--preset", "large"])
    assert "335,141,888" in capsys.readouterr().out


def test_unknown_option_is_refused(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["params", "--preset", "base", "--hidden-size", "3"])
    assert exit_info.value.code == 2
    assert "unrecognized arguments" in capsys.readouterr().err


def test_demo_finds_topical_neighbours(minilm_dir, capsys) -> None:
    score = _load(JOBS["demo"])(model=str(minilm_dir), top_k=2)
    assert score == 1.0  # every query's nearest sentence is on its topic with the pre-trained weights
    out = capsys.readouterr().out
    assert "query: Who won the game?" in out and "random init" in out


@pytest.mark.parametrize("missing", ["fastapi", "uvicorn", "prometheus_client"])
def test_serve_without_the_extra_is_one_line(missing: str, monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, missing, None)  # `import missing` now fails as if it were not installed
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--model", "no-such-model-dir"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and missing in err[0] and "pip install 'bertforge[serve]'" in err[0]
