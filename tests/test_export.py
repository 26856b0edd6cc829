"""`tive export`: LLaMA-Factory's dataset_info entries and training YAMLs, LLaVA's finetune arguments, lmms-eval."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from tive.baseline import run_baseline
from tive.cli import main
from tive.compare import BENCHMARKS
from tive.errors import TiveError
from tive.export import _records, export_llava, llama_factory_entry, run_export
from tive.io import read_json


@pytest.fixture()
def run_copy(small_run: Path, tmp_path: Path) -> Path:
    """A copy of the shared run with a random baseline (the session's run must not change)."""
    run_dir = Path(shutil.copytree(small_run, tmp_path / "run"))
    run_baseline(run_dir, "random")
    return run_dir


def test_llama_factory_export_names_every_dataset_by_absolute_path_with_its_layout(run_copy: Path) -> None:
    assert main(["export", str(run_copy), "--for", "llama-factory"]) == 0
    folder = run_copy / "export" / "llama-factory"
    info = read_json(folder / "dataset_info.json")
    assert set(info) == {"tive_full", "tive_subset", "tive_random"}
    assert info["tive_full"]["file_name"] == str(Path(read_json(run_copy / "prepare.json")["data"]).resolve())
    assert info["tive_subset"]["file_name"] == str((run_copy / "subset.json").resolve())
    assert info["tive_random"]["file_name"] == str((run_copy / "baselines" / "random.json").resolve())
    for entry in info.values():
        assert Path(entry["file_name"]).is_absolute() and Path(entry["file_name"]).is_file()
        # LLaVA records: LLaMA-Factory's sharegpt converter, columns and tags as llamafactory.data.parser reads them
        assert entry["formatting"] == "sharegpt"
        assert entry["columns"] == {"messages": "conversations", "images": "image"}
        assert entry["tags"]["role_tag"] == "from" and entry["tags"]["user_tag"] == "human"
    images = read_json(run_copy / "prepare.json")["images"]
    for name in ("full", "subset", "random"):
        config = yaml.safe_load((folder / f"train_{name}.yaml").read_text())
        assert config["dataset"] == f"tive_{name}" and config["dataset_dir"] == str(folder.resolve())
        assert config["media_dir"] == str(Path(images).resolve()) and Path(config["media_dir"]).is_absolute()
        assert config["model_name_or_path"] == str((run_copy / "base_model").resolve())  # the run's tiny model
        assert config["template"] == "llava"  # its model_type
        assert config["stage"] == "sft" and config["do_train"] is True and config["finetuning_type"] == "full"
        assert isinstance(config["learning_rate"], float) and config["learning_rate"] == 2e-5  # YAML 1.1 float
        assert config["num_train_epochs"] == 1.0 and config["output_dir"].endswith(f"train/{name}")
    script = (run_copy / "export" / "lmms_eval.sh").read_text()
    tasks = ",".join(b.task for b in BENCHMARKS)
    for name in ("full", "subset", "random"):
        assert (f"--model llava_hf --model_args pretrained={(run_copy / 'train' / name).resolve()} --tasks {tasks}"
                in script)
        assert f"--output_path {(run_copy / 'eval' / name).resolve()}" in script


def test_llava_export_writes_the_finetune_arguments(run_copy: Path) -> None:
    run_export(run_copy, "llava")
    text = (run_copy / "export" / "llava" / "random.args").read_text()
    images = Path(read_json(run_copy / "prepare.json")["images"]).resolve()
    assert f"--data_path {(run_copy / 'baselines' / 'random.json').resolve()}" in text
    assert f"--image_folder {images}" in text
    assert "--output_dir" in text and (run_copy / "export" / "llava" / "subset.args").is_file()
    assert "--model llava " in (run_copy / "export" / "lmms_eval.sh").read_text()


def test_llava_export_refuses_what_llavas_train_py_cannot_read(tmp_path: Path) -> None:
    messages = tmp_path / "messages.json"
    messages.write_text(json.dumps([{"messages": [{"role": "user", "content": "<image>Hi"},
                                                  {"role": "assistant", "content": "Hello"}], "images": ["a.png"]}]))
    with pytest.raises(TiveError, match="sharegpt record.*LLaVA-format"):
        export_llava(tmp_path, {"subset": messages}, "json", None, tmp_path / "out")
    with pytest.raises(TiveError, match="json.load"):
        export_llava(tmp_path, {"subset": messages}, "jsonl", None, tmp_path / "out")
    several = tmp_path / "several.json"
    several.write_text(json.dumps([{"id": "x", "image": ["a.png", "b.png"], "conversations": [
        {"from": "human", "value": "<image><image>Same?"}, {"from": "gpt", "value": "No"}]}]))
    with pytest.raises(TiveError, match="record 0 \\(id 'x'\\), field 'image': a list"):
        export_llava(tmp_path, {"subset": several}, "json", None, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def _entry(tmp_path: Path, records: list[dict]) -> dict:
    path = tmp_path / "data.json"
    path.write_text(json.dumps(records))
    return llama_factory_entry(path, _records(path))


def test_llama_factory_entry_follows_each_record_shape(tmp_path: Path) -> None:
    sharegpt = _entry(tmp_path, [{"messages": [{"role": "system", "content": "Be brief."},
                                               {"role": "user", "content": "<image>What?"},
                                               {"role": "assistant", "content": "A cat."}], "images": ["c.png"]},
                                 {"messages": [{"role": "user", "content": "Hi"},
                                               {"role": "assistant", "content": "Hello"}]}])
    assert sharegpt["formatting"] == "sharegpt" and sharegpt["columns"] == {"messages": "messages", "images": "images"}
    assert sharegpt["tags"] == {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                                "assistant_tag": "assistant", "system_tag": "system"}
    alpaca = _entry(tmp_path, [{"instruction": "Name it.", "output": "A dog.", "images": ["d.png"]}])
    assert alpaca["formatting"] == "alpaca"
    assert alpaca["columns"] == {"prompt": "instruction", "query": None, "response": "output", "history": None,
                                 "system": None, "images": "images"}
    with pytest.raises(TiveError, match="OpenAI-style content parts"):
        _entry(tmp_path, [{"messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]},
                                        {"role": "assistant", "content": [{"type": "text", "text": "Hello"}]}]}])
    with pytest.raises(TiveError, match="several shapes \\(1 instruction, 1 llava\\)"):
        _entry(tmp_path, [{"instruction": "Name it.", "output": "A dog."},
                          {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Yo"}]}])
    # a field some records lack is still a column: LLaMA-Factory's JSON loader reads it as null there
    partial = _entry(tmp_path, [{"system_prompt": "x", "conversations": [{"from": "human", "value": "Hi"},
                                                                         {"from": "gpt", "value": "Yo"}]},
                                {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Yo"}]}])
    assert partial["columns"] == {"messages": "conversations", "system": "system_prompt"}


def test_llama_factory_export_refuses_an_image_without_its_placeholder(run_copy: Path, tmp_path: Path) -> None:
    from tive.export import check_placeholders

    path = tmp_path / "data.json"
    path.write_text(json.dumps([{"id": "q1", "image": "a.png", "conversations": [
        {"from": "human", "value": "What is it?"}, {"from": "gpt", "value": "A cat."}]}]))
    with pytest.raises(TiveError, match="record 0 \\(id 'q1'\\).*1 image\\(s\\) but 0 <image> placeholder"):
        check_placeholders(path, _records(path))


def test_export_without_a_known_template_says_what_to_give(run_copy: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    assert main(["export", str(run_copy), "--for", "llama-factory", "--model", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "--template" in err and "Traceback" not in err
    assert main(["export", str(run_copy), "--for", "llama-factory", "--model", str(tmp_path),
                 "--template", "qwen2_vl", "--finetuning-type", "lora"]) == 0
    config = yaml.safe_load((run_copy / "export" / "llama-factory" / "train_subset.yaml").read_text())
    assert config["template"] == "qwen2_vl" and config["finetuning_type"] == "lora" and config["lora_rank"] == 128


def test_export_refuses_a_baseline_made_for_another_selection(run_copy: Path, capsys: pytest.CaptureFixture) -> None:
    from tive.config import SelectOptions
    from tive.stages import run_select

    run_select(run_copy, SelectOptions(budget="0.1", select_seed=5))  # the subset shrinks; the baseline does not
    assert main(["export", str(run_copy), "--for", "llama-factory"]) == 2
    err = capsys.readouterr().err
    assert "baseline random was made for a 28-record subset; the subset now has 14" in err
    assert "stale: made for a 28-record subset" in (run_copy / "report.html").read_text()
    assert "Traceback" not in err
    run_baseline(run_copy, "random")
    assert main(["export", str(run_copy), "--for", "llama-factory"]) == 0


def test_export_trains_the_target_model_when_a_proxy_selected(run_copy: Path, tmp_path: Path) -> None:
    """With a proxy reference (`--target-model`, recorded in config.yaml's warmup section), the YAML trains the
    target, with the target's template."""
    target = tmp_path / "target"
    target.mkdir()
    (target / "config.json").write_text(json.dumps({"model_type": "qwen2_5_vl"}))
    config = yaml.safe_load((run_copy / "config.yaml").read_text())
    config["warmup"]["target_model"] = str(target)
    (run_copy / "config.yaml").write_text(yaml.safe_dump(config))
    run_export(run_copy, "llama-factory")
    trained = yaml.safe_load((run_copy / "export" / "llama-factory" / "train_subset.yaml").read_text())
    assert trained["model_name_or_path"] == str(target) and trained["template"] == "qwen2_vl"
    assert "--model qwen2_5_vl " in (run_copy / "export" / "lmms_eval.sh").read_text()
