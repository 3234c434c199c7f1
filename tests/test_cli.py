"""The `bertforge` command: every job resolves and documents itself; the demo finds real neighbours."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import sys
from pathlib import Path

import pytest

from bertforge.cli import JOBS, _current_names, _load, main, option_defaults, option_names, settings_groups
from bertforge.options import RENAMED


@pytest.mark.parametrize("name", list(JOBS))
def test_every_job_is_importable_and_documented(name: str) -> None:
    job = _load(JOBS[name])
    doc = inspect.getdoc(job) or ""
    assert doc.strip(), f"{name}: the job's docstring is its --help"
    groups = settings_groups(job)
    for param in set(inspect.signature(job).parameters) - set(groups):
        assert f"{param}:" in doc, f"{name}: parameter {param!r} is not documented under Args:"
    for settings in groups.values():  # a settings dataclass documents its fields itself
        for field in dataclasses.fields(settings):
            assert f"    {field.name}: " in (settings.__doc__ or ""), f"{settings.__name__}.{field.name} has no help"


def test_top_level_help_lists_every_job(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for name in JOBS:
        assert name in out


def test_dashes_underscores_and_old_names() -> None:
    accepted = {"text_column", "max_length", "learning_rate", "threads"}
    args = ["--text-column", "a-b", "--max-seq-length=5", "--lr", "1e-3", "--num_threads", "2", "--max_length", "7",
            "-h"]
    assert _current_names(args, accepted) == ["--text_column", "a-b", "--max_length=5", "--learning_rate", "1e-3",
                                              "--threads", "2", "--max_length", "7", "-h"]
    # An old name is only translated where the job has the new one and not the old: pretrain keeps --data.
    assert _current_names(["--data", "x"], {"data", "output_dir"}) == ["--data", "x"]
    assert _current_names(["--data", "x"], {"input", "model"}) == ["--input", "x"]


@pytest.mark.parametrize("name", list(JOBS))
def test_one_name_per_concept(name: str) -> None:
    """No job still calls an option by a replaced name (pretrain's --data is a prepared folder, not an input
    file), and every job with a device picks the best one by default."""
    job = _load(JOBS[name])
    assert option_names(job) & (set(RENAMED) - {"data"}) == set()
    assert option_defaults(job).get("device", "auto") == "auto"


def test_a_settings_class_name_means_one_thing() -> None:
    """No two jobs' settings groups are different classes of one name: a reader meeting `CorpusSettings`
    knows which one it is (ablate's corpus and downstream data are `AblationCorpus`)."""
    by_name: dict[str, set[type]] = {}
    for target in JOBS.values():
        for settings in settings_groups(_load(target)).values():
            by_name.setdefault(settings.__name__, set()).add(settings)
    assert {name: classes for name, classes in by_name.items() if len(classes) > 1} == {}


def test_evaluate_and_predict_keep_their_flat_options_in_settings_groups() -> None:
    """evaluate and predict gather their settings in dataclasses (EvaluationData; PredictionData and
    PredictionColumns) yet take exactly the options, with the defaults, they took as 14 flat parameters."""
    evaluate, predict = _load(JOBS["evaluate"]), _load(JOBS["predict"])
    assert set(settings_groups(evaluate)) == {"data"} and set(settings_groups(predict)) == {"data", "columns"}
    shared = {"model", "input", "output", "dataset", "split", "text_column", "text_pair_column", "max_length",
              "batch_size", "device", "precision"}
    assert option_names(evaluate) == shared | {"titles", "label_column", "max_eval_examples"}
    assert option_names(predict) == shared | {"id_column", "label_output_column", "probabilities"}
    unset = dict.fromkeys(["input", "output", "dataset", "text_column", "text_pair_column", "max_length"])
    running = {"batch_size": 64, "device": "auto", "precision": "fp32"}
    assert option_defaults(evaluate) == {**unset, **running, "split": "validation", "titles": None,
                                         "label_column": None, "max_eval_examples": None}
    assert option_defaults(predict) == {**unset, **running, "split": "test", "id_column": None,
                                        "label_output_column": "label", "probabilities": True}


def test_embed_keeps_its_flat_options_in_a_settings_group(tmp_path) -> None:
    """embed gathers how a vector is made in VectorSettings yet takes exactly the 13 options, with the defaults,
    it took as flat parameters; a YAML --config names them flat too."""
    from bertforge.inference.embed import VectorSettings

    embed = _load(JOBS["embed"])
    assert settings_groups(embed) == {"vectors": VectorSettings}
    assert option_names(embed) == {"model", "input", "output", "text_column", "batch_size", "device", "precision",
                                   "pooling", "layers", "combine", "max_length", "normalize", "per_token"}
    assert option_defaults(embed) == {"output": None, "text_column": None, "batch_size": 32, "device": "auto",
                                      "precision": "fp32", "pooling": None, "layers": None, "combine": "concat",
                                      "max_length": None, "normalize": None, "per_token": False}
    import bertforge.inference.embed as embed_module

    received, real = {}, embed_module.run

    @functools.wraps(real)  # the job's signature, so the command line is built as for the real one
    def spy(*args, **kwargs) -> None:
        received.update(inspect.signature(real).bind(*args, **kwargs).arguments)

    config = tmp_path / "embed.yaml"
    config.write_text("pooling: cls\nmax-length: 16\nbatch_size: 4\n", encoding="utf-8")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(embed_module, "run", spy)
        main(["embed", "--model", "m", "--input", "t.txt", "--config", str(config), "--layers", "[-1]"])
    assert received["vectors"] == VectorSettings(pooling="cls", layers=[-1], max_length=16)
    assert received["batch_size"] == 4 and "pooling" not in received


def _printed_config(capsys, *args: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--print-config"])
    assert exit_info.value.code == 0
    return "\n" + capsys.readouterr().out  # every option on a line of its own, the first one too


def test_the_leads_pretrain_command_line_still_parses(capsys) -> None:
    out = _printed_config(capsys, "pretrain", "--data", "prepared", "--output-dir", "run", "--recipe", "budget",
                          "--preset", "mini", "--max-minutes", "50", "--threads", "2", "--eval-batches", "5",
                          "--eval-every", "100", "--batch-size", "64", "--lr", "2e-3")
    for line in ("data: prepared", "recipe: budget", "max_minutes: 50.0", "threads: 2", "eval_batches: 5",
                 "eval_every: 100", "batch_size: 64", "learning_rate: 0.002"):
        assert f"\n{line}\n" in out, line


def test_yaml_takes_dashes_underscores_and_old_names(tmp_path, capsys) -> None:
    config = tmp_path / "finetune.yaml"
    config.write_text("output-dir: run\ntask: sst2\nmax_seq_length: 64\ndoc-stride: 16\nnum_threads: 3\n"
                      "learning-rate: 5.0e-5\nmax-train-examples: 100\n", encoding="utf-8")
    out = _printed_config(capsys, "finetune", "--config", str(config), "--max-eval-examples", "9")
    for line in ("output_dir: run", "task: sst2", "max_length: 64", "stride: 16", "threads: 3",
                 "learning_rate: 5.0e-05", "max_train_examples: 100", "max_eval_examples: 9"):
        assert f"\n{line}\n" in out, line


@pytest.mark.parametrize("config", sorted((Path(__file__).parents[1] / "configs").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_shipped_configs_parse(config: Path, capsys) -> None:
    job = "pretrain" if config.name.startswith("pretrain") else "finetune"
    assert "output_dir:" in _printed_config(capsys, job, "--config", str(config))


def test_a_config_that_is_not_a_mapping_is_one_line(tmp_path, capsys) -> None:
    config = tmp_path / "list.yaml"
    config.write_text("- 1\n- 2\n", encoding="utf-8")
    with pytest.raises(SystemExit) as exit_info:
        main(["params", "--config", str(config)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err == f"bertforge: error: --config {config}: expected `option: value` lines, found a list\n"


def test_help_shows_dashes_and_the_old_names(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["pretrain", "--help"])
    out = capsys.readouterr().out
    assert "--learning-rate" in out and "--max-length" in out and "--output-dir" in out
    assert "--learning_rate" not in out and "--output_dir" not in out
    assert "--lr (now --learning-rate)" in out and "--max-seq-length (now --max-length)" in out


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


@pytest.mark.parametrize("missing", ["fastapi", "uvicorn", "prometheus_client", "fastapi_offline"])
def test_serve_without_the_extra_is_one_line(missing: str, monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, missing, None)  # `import missing` now fails as if it were not installed
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--model", "no-such-model-dir"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and missing in err[0] and "pip install 'bertforge[serve]'" in err[0]


def test_serve_gathers_its_flat_options_into_groups(monkeypatch) -> None:
    """`bertforge serve` keeps its flat options; each lands in its settings group, the rest keep their defaults."""
    pytest.importorskip("uvicorn", reason="pip install 'bertforge[serve]'")
    from bertforge.inference import server

    seen = {}
    monkeypatch.setattr(server, "require_serve_extra", lambda: None)
    monkeypatch.setattr(server.pipelines, "load_pipeline", lambda model, **how: seen.update(loaded=(model, how)))
    monkeypatch.setattr(server, "create_app", lambda loaded, **groups: seen.update(groups) or "app")
    monkeypatch.setattr(server, "uvicorn_config", lambda app, bind: seen.update(bind=bind))
    monkeypatch.setattr("uvicorn.Server", lambda config: type("Stub", (), {"run": lambda self: None})())
    main(["serve", "--model", "m", "--device", "cpu", "--precision", "bf16", "--port", "9", "--max-wait-ms", "7",
          "--max-texts", "3", "--head-timeout-s", "2"])
    assert seen["loaded"] == ("m", {"device": "cpu", "precision": "bf16"})
    assert seen["bind"] == server.BindSettings(host="127.0.0.1", port=9)
    assert seen["batching"] == server.BatchSettings(max_wait_ms=7.0)
    assert seen["limits"] == server.Limits(max_texts=3, head_timeout_s=2.0)
    assert seen["name"] == "m"


def test_a_job_under_torchrun_leaves_its_process_group_finished_or_failed(tmp_path) -> None:
    import socket

    import torch.distributed as dist

    def join() -> None:  # a one-process group, as torchrun's environment would give
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)

    join()
    try:
        main(["params", "--preset", "tiny"])
        assert not dist.is_initialized()  # left after a finished job
        join()
        with pytest.raises(SystemExit) as failed:
            main(["pretrain", "--data", str(tmp_path / "missing"), "--output-dir", str(tmp_path / "run")])
        assert failed.value.code == 2 and not dist.is_initialized()  # and after a one-line error
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_a_list_option_takes_bare_values_as_well_as_brackets(capsys) -> None:
    """`--files DIR`, `--files a b`, `--files=a` and the documented `--files [a, b]` give the same list; an option
    that also takes one value (fill-mask's --text: list or str) keeps a bare value as it is."""
    for args in (["--files", "corpus/"], ["--files=corpus/"], ["--files", "[corpus/]"]):
        assert "\nfiles:\n- corpus\n" in _printed_config(capsys, "prepare", *args, "--output-dir", "out")
    out = _printed_config(capsys, "prepare", "--files", "a.txt", "b dir/x.txt", "--output-dir", "out")
    assert "\nfiles:\n- a.txt\n- b dir/x.txt\n" in out
    out = _printed_config(capsys, "embed", "--model", "m", "--input", "t.txt", "--layers", "-1", "-2")
    assert "\nlayers:\n- -1\n- -2\n" in out
    out = _printed_config(capsys, "fill-mask", "--model", "m", "--text", "The [MASK] sat.")
    assert "\ntext: The [MASK] sat.\n" in out
