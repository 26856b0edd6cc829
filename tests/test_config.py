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
from tive.config import SECTIONS, config_values, load_config, options_from_args, write_run_config


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
    config = {section: {f.name: values[f.name] for f in dataclasses.fields(cls)}
              for section, cls in SECTIONS.items() if cls in command.options}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"data": str(tmp_path / "d.json"), **config}))
    positional = {"run": [], "prepare": [str(tmp_path / "d.json"), "--out", str(tmp_path / "o")]}.get(
        command.name, [str(tmp_path / "run")])
    extra = ["--out", str(tmp_path / "o")] if command.name == "run" else []
    args = _parse([command.name, *positional, *extra, "--config", str(path)])
    for cls in command.options:
        expected = cls(**{f.name: values[f.name] for f in dataclasses.fields(cls)})
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
    ({"warmup": {"device": "cpu"}, "features": {"device": "cuda"}}, "warmup.device = 'cpu' and features.device"),
    (["not", "a", "mapping"], "the top level must be a mapping"),
])
def test_a_bad_config_file_is_named_with_the_key_and_no_traceback(content, message, tmp_path: Path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(content))
    assert main(["run", "DATA", "--out", str(tmp_path / "o"), "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and message in err and "Traceback" not in err


def test_run_config_yaml_reruns_the_run_to_the_same_subset(small_run: Path, tmp_path: Path, capsys):
    saved = load_config(small_run / "config.yaml")
    assert set(saved) == {"data", "prepare", "warmup", "features", "select", "versions"}
    assert saved["warmup"]["model"] == "tiny" and saved["versions"]["torch"]
    out = tmp_path / "again"
    assert main(["run", "--config", str(small_run / "config.yaml"), "--out", str(out)]) == 0
    assert (out / "subset.json").read_bytes() == (small_run / "subset.json").read_bytes()
    assert json.loads((out / "tasks.json").read_text()) == json.loads((small_run / "tasks.json").read_text())
    assert "warning" not in capsys.readouterr().err


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
    assert config_values(config, (SelectOptions,), "x")["budget"] == "0.4"
