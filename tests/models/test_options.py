"""The model options on real-architecture checkpoints: --dtype, --max-length, --reference-adapter, checkpointing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tive.cli import main
from tive.config import FeaturesOptions, PrepareOptions, WarmupOptions
from tive.errors import TiveError
from tive.model.encode import IGNORE_INDEX, encode_record
from tive.model.loading import check_reference_adapter, load_base, load_with_adapter, lora_parameters
from tive.rundir import load_prepared
from tive.stages import run_features, run_prepare, run_warmup


def run_args(data: Path, out: Path, model: Path, *extra: str) -> list[str]:
    return [
        "run", str(data), "--images", str(data.parent / "images"), "--task-field", "dataset", "--out", str(out),
        "--model", str(model), "--proj-dim", "64", "--epochs", "1", "--lora-rank", "8", *extra,
    ]


def manifest(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "manifest.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def llava_run(checkpoints, demo_data, tmp_path_factory) -> Path:
    """A complete float32 run of the tiny LLaVA-1.5 checkpoint on the 40-record dataset."""
    out = tmp_path_factory.mktemp("llava_run") / "run"
    assert main(run_args(demo_data, out, checkpoints("llava"))) == 0
    return out


def test_bfloat16_loads_the_model_in_bfloat16_and_keeps_gradients_float32(checkpoints, demo_data, tmp_path, llava_run):
    out = tmp_path / "run"
    assert main(run_args(demo_data, out, checkpoints("llava"), "--dtype", "bfloat16")) == 0
    warm = json.loads((out / "warmup" / "warmup.json").read_text())
    meta = json.loads((out / "features" / "meta.json").read_text())
    assert warm["settings"]["dtype"] == meta["request"]["dtype"] == "bfloat16"
    norms = np.load(out / "features" / "norms.npy")
    assert norms.dtype == np.float64 and np.isfinite(norms).all() and (norms > 0).all()
    assert np.load(out / "features" / "features.npy").dtype == np.float16  # the store; the weights were bfloat16, the gradients float32
    # Same records, same seeds: the bfloat16 norms track the float32 ones.
    reference = np.load(llava_run / "features" / "norms.npy")
    assert np.corrcoef(norms, reference)[0, 1] > 0.99
    model, _ = load_with_adapter(checkpoints("llava"), out / "warmup" / "adapter", "cpu", "bfloat16")
    assert model.get_base_model().model.language_model.layers[0].mlp.up_proj.weight.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for _, p in lora_parameters(model))


def test_features_refuse_another_dtype_unless_forced(llava_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(llava_run, run)
    options = FeaturesOptions(proj_dim=64, dtype="bfloat16")
    with pytest.raises(TiveError, match="other dtype.*--force"):
        run_features(run, options)
    run_features(run, FeaturesOptions(proj_dim=64, dtype="bfloat16", force=True))
    assert json.loads((run / "features" / "meta.json").read_text())["request"]["dtype"] == "bfloat16"


def test_max_length_truncation_is_counted_reported_and_recorded(checkpoints, demo_data, tmp_path, capsys):
    max_length = 60
    out = tmp_path / "run"
    assert main(run_args(demo_data, out, checkpoints("llava"), "--max-length", str(max_length))) == 0
    printed = capsys.readouterr().out
    # What the untruncated encodings say should happen.
    _, processor = load_base(checkpoints("llava"))
    dataset, _ = load_prepared(out)
    lengths, first_answer = {}, {}
    for record in dataset.records:
        encoded = encode_record(processor, record)
        lengths[record.index] = len(encoded["input_ids"])
        first_answer[record.index] = int((encoded["labels"] != IGNORE_INDEX).nonzero().min())
    truncated = sorted(i for i, n in lengths.items() if n > max_length)
    no_answer = sorted(i for i, first in first_answer.items() if first >= max_length)
    assert 0 < len(no_answer) < len(truncated) < len(lengths)  # the test data exercises every case

    kept_truncated = [i for i in truncated if i not in no_answer]
    meta = json.loads((out / "features" / "meta.json").read_text())
    assert meta["request"]["max_length"] == max_length
    assert meta["truncated_records"] == len(kept_truncated)
    # A record left without an answer token cannot be learnt from at this length: skipped and named, never given a
    # zero gradient that would pull its task's value down.
    assert sorted(int(i) for i in meta["skipped"]) == no_answer
    assert all(f"no answer token within --max-length {max_length}" in reason for reason in meta["skipped"].values())
    assert f"features: --max-length {max_length}: {len(kept_truncated)} of 40 records truncated" in printed
    warm = json.loads((out / "warmup" / "warmup.json").read_text())
    assert warm["settings"]["max_length"] == max_length
    warm_indices = warm["warmup_indices"]
    assert warm["truncated_records"] == sum(i in kept_truncated for i in warm_indices)
    assert sorted(int(i) for i in warm["skipped"]) == [i for i in warm_indices if i in no_answer]
    assert f"warmup: --max-length {max_length}: {warm['truncated_records']} of {len(warm_indices)}" in printed
    rows = manifest(out)
    for row in rows:
        if row["index"] in no_answer:
            assert row["status"].startswith("skipped: features: no answer token") and row["grad_norm"] is None
            assert row["selected"] == 0
        else:
            assert row["status"] == "ok" and row["grad_norm"] > 0
    assert np.load(out / "features" / "features.npy").shape[0] == 40 - len(no_answer)


def test_max_length_never_cuts_an_image(checkpoints, demo_data, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(run_args(demo_data, out, checkpoints("qwen2_vl"), "--max-length", "12")) == 2
    err = capsys.readouterr().err
    assert "field 'image': its image tokens run to position" in err and "past --max-length 12" in err
    assert "Traceback" not in err


def test_reference_adapter_skips_the_warmup_and_gives_the_same_features(llava_run, checkpoints, demo_data, tmp_path):
    adapter = llava_run / "warmup" / "adapter"
    out = tmp_path / "run"
    assert main(run_args(demo_data, out, checkpoints("llava"), "--reference-adapter", str(adapter))) == 0
    warm = json.loads((out / "warmup" / "warmup.json").read_text())
    reference = json.loads((llava_run / "warmup" / "warmup.json").read_text())
    assert warm["steps"] == 0 and warm["warmup_indices"] == [] and not (out / "warmup" / "train_log.jsonl").exists()
    assert warm["adapter_sha256"] == reference["adapter_sha256"] == warm["settings"]["reference_adapter_sha256"]
    assert warm["settings"]["reference_adapter"] == str(adapter.resolve())
    meta = json.loads((out / "features" / "meta.json").read_text())
    assert meta["request"]["adapter_sha256"] == reference["adapter_sha256"]
    for name in ("features.npy", "norms.npy"):  # same model, adapter, records and projection: same bytes
        assert (out / "features" / name).read_bytes() == (llava_run / "features" / name).read_bytes()
    # Rerun: nothing to do; another adapter: refused without --force.
    assert main(run_args(demo_data, out, checkpoints("llava"), "--reference-adapter", str(adapter))) == 0
    with pytest.raises(TiveError, match="other settings.*--force"):
        run_warmup(out, WarmupOptions(model=str(checkpoints("llava"))))


def test_reference_adapter_is_checked_against_the_base_model(llava_run, checkpoints, tmp_path):
    from peft import LoraConfig, get_peft_model

    adapter = llava_run / "warmup" / "adapter"
    assert check_reference_adapter(adapter, checkpoints("llava"))["peft_type"] == "LORA"
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(adapter / "adapter_config.json", partial)
    with pytest.raises(TiveError, match="missing adapter_model.safetensors"):
        check_reference_adapter(partial, checkpoints("llava"))
    with pytest.raises(TiveError, match="made for base model .*llava.*not --model"):
        check_reference_adapter(adapter, checkpoints("idefics3"))
    # An adapter of another architecture, renamed to claim this base model: its modules do not exist here.
    base, _ = load_base(checkpoints("idefics3"))
    other = tmp_path / "other"
    get_peft_model(base, LoraConfig(r=2, target_modules=r"model\.text_model\..*\.q_proj$")).save_pretrained(other)
    config = json.loads((other / "adapter_config.json").read_text())
    (other / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": "llava"}))
    with pytest.raises(TiveError, match="does not fit --model .*no linear layer model.text_model"):
        check_reference_adapter(other, checkpoints("llava"))


def test_gradient_checkpointing_changes_neither_the_warmup_nor_the_features(checkpoints, demo_data, tmp_path):
    runs = {}
    for checkpointing in (False, True):
        run = tmp_path / f"run_{checkpointing}"
        run_prepare(demo_data, run, PrepareOptions(images=str(demo_data.parent / "images"), task_field="dataset"))
        common = {"gradient_checkpointing": checkpointing, "device": "cpu"}
        warm = run_warmup(run, WarmupOptions(model=str(checkpoints("qwen2_vl")), epochs=2, batch_size=2,
                                             learning_rate=1e-3, lora_rank=4, **common))
        assert warm["gradient_checkpointing"] is checkpointing and warm["steps"] == 4  # 3 records, 2 per step
        run_features(run, FeaturesOptions(proj_dim=32, grad_batch_size=8, **common))
        runs[checkpointing] = (warm, np.load(run / "features" / "norms.npy"))
    (warm_plain, norms_plain), (warm_ckpt, norms_ckpt) = runs[False], runs[True]
    assert warm_plain["settings"] == warm_ckpt["settings"]  # checkpointing is how, not what
    np.testing.assert_allclose(warm_ckpt["loss_last"], warm_plain["loss_last"], rtol=1e-5)
    np.testing.assert_allclose(norms_ckpt, norms_plain, rtol=1e-4)


def test_a_conversation_the_template_cannot_render_is_skipped(checkpoints, demo_data: Path, tmp_path: Path):
    """Templates refuse some conversations (Mistral's: "roles must alternate", no system turn): that record is
    skipped with the template's own message, the others are computed."""
    from tests.models.builders import LLAVA_NEXT_MISTRAL_TEMPLATE

    model = tmp_path / "model"
    shutil.copytree(checkpoints("llava_next"), model)
    _, processor = load_base(model)
    processor.chat_template = (
        "{% if messages[0]['role'] == 'system' %}{{ raise_exception('Conversation roles must alternate "
        "user/assistant/user/assistant/...') }}{% endif %}" + LLAVA_NEXT_MISTRAL_TEMPLATE
    )
    processor.save_pretrained(model)
    records = json.loads(demo_data.read_text())
    records[2]["system_prompt"] = "You are terse."
    data = tmp_path / "data" / "d.json"
    data.parent.mkdir()
    data.write_text(json.dumps(records))
    shutil.copytree(demo_data.parent / "images", data.parent / "images")
    out = tmp_path / "run"
    args = ["run", str(data), "--images", str(data.parent / "images"), "--task-field", "dataset", "--out", str(out),
            "--model", str(model), "--proj-dim", "32", "--epochs", "1", "--lora-rank", "4"]
    assert main(args) == 0
    rows = manifest(out)
    assert rows[2]["status"].startswith("skipped: features: the chat template cannot render it")
    assert "roles must alternate" in rows[2]["status"]
    assert sum(row["status"] == "ok" for row in rows) == len(records) - 1


def test_a_reference_adapter_with_lora_outside_the_language_model_is_refused(checkpoints, tmp_path):
    from peft import LoraConfig, get_peft_model

    base, _ = load_base(checkpoints("llava"))
    adapter = tmp_path / "vision_adapter"
    config = LoraConfig(r=2, target_modules=r"model\.(vision_tower|language_model)\..*\.q_proj$")
    get_peft_model(base, config).save_pretrained(adapter)
    with pytest.raises(TiveError, match="adapts model.vision_tower.* outside the language model"):
        check_reference_adapter(adapter, checkpoints("llava"))


def test_dropout_in_the_warmup_comes_from_the_seed(checkpoints, demo_data, tmp_path):
    """A checkpoint whose config has dropout: the same seed gives the same adapter, whatever the global RNG did."""
    from transformers import AutoConfig

    model = tmp_path / "model"
    shutil.copytree(checkpoints("llava"), model)
    config = AutoConfig.from_pretrained(model)
    config.text_config.attention_dropout = 0.5
    config.save_pretrained(model)
    hashes = []
    for name, noise in (("a", 1), ("b", 2), ("c", 3)):
        torch.manual_seed(noise)  # global RNG state differs before each warm-up
        torch.rand(noise)
        run = tmp_path / name
        run_prepare(demo_data, run, PrepareOptions(images=str(demo_data.parent / "images"), task_field="dataset"))
        seed = 0 if name != "c" else 1
        warm = run_warmup(run, WarmupOptions(model=str(model), epochs=2, batch_size=2, learning_rate=1e-2,
                                             lora_rank=4, seed=seed, device="cpu"))
        hashes.append(warm["adapter_sha256"])
    assert hashes[0] == hashes[1] != hashes[2]
