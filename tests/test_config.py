"""A replayable configuration: every option of every stage round-trips through a YAML file, the command line wins,
and RUN/config.yaml reruns a run to the same bytes."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, get_type_hints

import pytest
import yaml

from tive.cli import COMMANDS, _parse, main
from tive.config import ACTION, SECTIONS, load_config, options_from_args, write_run_config


def unusual_value(cls: type, field: dataclasses.Field) -> Any:
    """A valid value for the field that is not its default (the same for a name shared by several classes)."""
    import types
    import typing

    hint = get_type_hints(cls)[field.name]
    kinds = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    choices = field.metadata.get("choices")
    if choices:
        return [c for c in choices if c != field.default][0]
    if bool in kinds:
        return not field.default
    if any(typing.get_origin(k) is list for k in kinds):
        return ["alpha", "beta"]
    if field.name == "shard":
        return "1/3"
    if int in kinds:
        return 7 if field.default != 7 else 9
    if float in kinds:
        return 0.37
    return f"/some/{field.name}"


@pytest.mark.parametrize("command", [c for c in COMMANDS if c.options], ids=lambda c: c.name)
def test_every_option_of_every_stage_round_trips_through_a_config_file(command, tmp_path: Path):
    values = {}
    for cls in command.options:
        for field in dataclasses.fields(cls):
            values.setdefault(field.name, unusual_value(cls, field))
    # Actions (--force, --retry-skipped) are not configuration: test_actions_in_a_config_file_are_ignored_with_a_note
    config = {section: {f.name: values[f.name] for f in dataclasses.fields(cls) if f.metadata.get("kind") != ACTION}
              for section, cls in SECTIONS.items() if cls in command.options}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"data": str(tmp_path / "d.json"), **config}))
    positional = {"run": [], "prepare": [str(tmp_path / "d.json"), "--out", str(tmp_path / "o")]}.get(
        command.name, [str(tmp_path / "run")])
    extra = ["--out", str(tmp_path / "o")] if command.name == "run" else []
    args = _parse([command.name, *positional, *extra, "--config", str(path)])
    for cls in command.options:
        expected = cls(**{f.name: values[f.name] for f in dataclasses.fields(cls) if f.metadata.get("kind") != ACTION})
        assert options_from_args(cls, args) == expected, cls.__name__


def test_the_command_line_wins_and_replaces_a_configured_list(tmp_path: Path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"features": {"proj_dim": 64, "chunk-size": 8},
                                    "select": {"exclude_task": ["a"], "budget": "0.3"}}))
    from tive.config import FeaturesOptions, SelectOptions

    args = _parse(["features", "RUN", "--config", str(path), "--proj-dim", "32"])
    assert options_from_args(FeaturesOptions, args).proj_dim == 32
    assert options_from_args(FeaturesOptions, args).chunk_size == 8
    args = _parse(["select", "RUN", "--config", str(path), "--exclude-task", "b"])
    assert options_from_args(SelectOptions, args).exclude_task == ["b"]
    args = _parse(["select", "RUN", "--config", str(path)])
    assert options_from_args(SelectOptions, args).exclude_task == ["a"]
    assert options_from_args(SelectOptions, args).budget == "0.3"


@pytest.mark.parametrize(("content", "message"), [
    ({"featurs": {}}, "unknown section 'featurs'"),
    ({"features": {"proj_dimension": 3}}, "section 'features' has no option 'proj_dimension'"),
    ({"features": {"proj_dim": "many"}}, "features.proj_dim is 'many', not a int"),
    (["not", "a", "mapping"], "the top level must be a mapping"),
])
def test_a_bad_config_file_is_named_with_the_key_and_no_traceback(content, message, tmp_path: Path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(content))
    assert main(["run", "DATA", "--out", str(tmp_path / "o"), "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and message in err and "Traceback" not in err


def test_run_config_yaml_reruns_the_run_to_the_same_subset(small_run: Path, tmp_path: Path, capsys,
                                                          monkeypatch: pytest.MonkeyPatch):
    """The replay of a config.yaml that an older tive wrote after `--force` (force: true in two sections), with
    per-stage devices and caps that differ, from another working directory: the same subset, a note for each
    ignored action, and the new run's config.yaml holds no action."""
    saved = load_config(small_run / "config.yaml")
    assert set(saved) == {"data", "prepare", "warmup", "features", "select", "versions"}
    assert saved["warmup"]["model"] == "tiny" and saved["versions"]["torch"]
    assert all("force" not in section for section in saved.values() if isinstance(section, dict))
    older = yaml.safe_load((small_run / "config.yaml").read_text())
    older["warmup"].update(force=True, device="cpu", max_bad_fraction=0.02)
    older["features"].update(force=True, device="auto", max_bad_fraction=0.05)
    config = tmp_path / "older.yaml"
    config.write_text(yaml.safe_dump(older, sort_keys=False))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    out = tmp_path / "again"
    assert main(["run", "--config", str(config), "--out", str(out)]) == 0
    assert (out / "subset.json").read_bytes() == (small_run / "subset.json").read_bytes()
    assert json.loads((out / "tasks.json").read_text()) == json.loads((small_run / "tasks.json").read_text())
    err = capsys.readouterr().err
    assert "warning" not in err
    for section in ("warmup", "features"):
        assert f"note: {config}: {section}.force ignored: --force is an action" in err
    replayed = yaml.safe_load((out / "config.yaml").read_text())
    assert "force" not in replayed["warmup"] and "force" not in replayed["features"]
    assert replayed["warmup"]["max_bad_fraction"] == 0.02 and replayed["features"]["max_bad_fraction"] == 0.05


def test_each_stage_takes_its_own_section_and_a_flag_given_sets_every_stage(tmp_path: Path):
    from tive.config import FeaturesOptions, PrepareOptions, WarmupOptions

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({
        "prepare": {"max_bad_fraction": 0.1},
        "warmup": {"model": "tiny", "dtype": "bfloat16", "device": "cpu", "max_bad_fraction": 0.02},
        "features": {"dtype": "float16", "device": "cuda:1", "max_bad_fraction": 0.05, "on_bad_record": "error"},
    }))
    base = ["run", "d.json", "--out", str(tmp_path / "o"), "--config", str(path)]
    args = _parse(base)
    prepare, warmup, features = (options_from_args(cls, args) for cls in (PrepareOptions, WarmupOptions,
                                                                            FeaturesOptions))
    assert (warmup.dtype, warmup.device, warmup.max_bad_fraction, warmup.on_bad_record) == \
        ("bfloat16", "cpu", 0.02, "skip")
    assert (features.dtype, features.device, features.max_bad_fraction, features.on_bad_record) == \
        ("float16", "cuda:1", 0.05, "error")
    assert prepare.max_bad_fraction == 0.1
    # A flag given on the command line, even with the default's value, sets every stage that takes it.
    args = _parse([*base, "--dtype", "float32", "--max-bad-fraction", "0.01", "--on-bad-record", "skip"])
    for cls in (PrepareOptions, WarmupOptions, FeaturesOptions):
        options = options_from_args(cls, args)
        assert options.max_bad_fraction == 0.01 and options.on_bad_record == "skip", cls.__name__
        assert getattr(options, "dtype", "float32") == "float32", cls.__name__
    assert options_from_args(WarmupOptions, args).device == "cpu"  # not given: each section's own


def test_actions_are_never_recorded_and_ignored_with_a_note_in_older_files(tmp_path: Path, capsys):
    from tive.config import FeaturesOptions, WarmupOptions

    write_run_config(tmp_path, warmup=WarmupOptions(model="tiny", force=True),
                     features=FeaturesOptions(force=True, retry_skipped=True))
    written = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert not {"force", "retry_skipped"} & (set(written["warmup"]) | set(written["features"]))
    older = tmp_path / "older.yaml"
    older.write_text(yaml.safe_dump({"warmup": {"model": "tiny", "force": True},
                                     "features": {"force": True, "retry-skipped": True}}))
    args = _parse(["features", str(tmp_path), "--config", str(older)])
    assert options_from_args(FeaturesOptions, args) == FeaturesOptions()
    err = capsys.readouterr().err
    assert f"note: {older}: features.force ignored" in err and f"note: {older}: features.retry_skipped ignored" in err
    args = _parse(["features", str(tmp_path), "--config", str(older), "--force"])  # the command line still can
    assert options_from_args(FeaturesOptions, args).force


def test_paths_are_recorded_absolute_and_names_as_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from tive.config import PrepareOptions, WarmupOptions

    monkeypatch.chdir(tmp_path)
    for folder in ("images", "checkpoint", "adapter", "tiny", "llava665k"):  # a folder named like a built-in too
        (tmp_path / folder).mkdir()
    (tmp_path / "rules.yaml").write_text("rules: [{task: all}]\n")
    run = tmp_path / "run"
    run.mkdir()
    write_run_config(run, data="data.json", prepare=PrepareOptions(images="images", task_rules="rules.yaml"),
                     warmup=WarmupOptions(model="checkpoint", reference_adapter="./adapter"))
    written = yaml.safe_load((run / "config.yaml").read_text())
    assert written["data"] == "data.json"  # names nothing that exists: as given
    assert written["prepare"]["images"] == str(tmp_path / "images")
    assert written["prepare"]["task_rules"] == str(tmp_path / "rules.yaml")
    assert written["warmup"]["model"] == str(tmp_path / "checkpoint")
    assert written["warmup"]["reference_adapter"] == str(tmp_path / "adapter")
    write_run_config(run, prepare=PrepareOptions(task_rules="llava665k"), warmup=WarmupOptions(model="tiny"))
    written = yaml.safe_load((run / "config.yaml").read_text())
    assert written["prepare"]["task_rules"] == "llava665k" and written["warmup"]["model"] == "tiny"
    write_run_config(run, warmup=WarmupOptions(model="llava-hf/llava-1.5-7b-hf"))  # a hub id
    assert yaml.safe_load((run / "config.yaml").read_text())["warmup"]["model"] == "llava-hf/llava-1.5-7b-hf"


def test_a_run_made_with_relative_paths_replays_from_another_directory(small_data: Path, tiny_model_dir: Path,
                                                                      tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import shutil

    work = tmp_path / "work"
    shutil.copytree(small_data.parent, work / "data")
    shutil.copytree(tiny_model_dir, work / "checkpoint")
    monkeypatch.chdir(work)
    assert main(["prepare", f"data/{small_data.name}", "--images", "data/images", "--task-field", "dataset",
                 "--out", "run"]) == 0
    assert main(["warmup", "run", "--model", "checkpoint", "--warmup-fraction", "0.05", "--lora-rank", "4",
                 "--device", "cpu", "--force"]) == 0
    config = work / "run" / "config.yaml"
    recorded = yaml.safe_load(config.read_text())
    assert "force" not in recorded["warmup"] and recorded["warmup"]["model"] == str(work / "checkpoint")
    monkeypatch.chdir(tmp_path)
    again = tmp_path / "again"
    assert main(["prepare", str(work / "data" / small_data.name), "--out", str(again), "--config", str(config)]) == 0
    assert main(["warmup", str(again), "--config", str(config)]) == 0
    first, second = (json.loads((run / "warmup" / "warmup.json").read_text()) for run in (work / "run", again))
    assert second["adapter_sha256"] == first["adapter_sha256"]


def test_other_package_versions_give_a_warning(small_run: Path, tmp_path: Path, capsys):
    config = yaml.safe_load((small_run / "config.yaml").read_text())
    config["versions"]["torch"] = "0.1"
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    _parse(["select", str(tmp_path), "--config", str(path)])
    assert "warning: torch 0.1 made this configuration" in capsys.readouterr().err


def test_stages_merge_their_sections_into_the_run_config(tmp_path: Path):
    from tive.config import PrepareOptions, SelectOptions

    write_run_config(tmp_path, data="d.json", prepare=PrepareOptions(images="i"))
    write_run_config(tmp_path, select=SelectOptions(budget="0.4"))
    config = load_config(tmp_path / "config.yaml")
    assert config["data"] == "d.json" and config["prepare"]["images"] == "i" and config["select"]["budget"] == "0.4"
