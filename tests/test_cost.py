"""FLOP accounting of `tive estimate`: parameters from a config alone, the selection against one epoch of the target."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tive.cli import main
from tive.cost import Tokens, epoch_flops, measure_tokens, model_shape, selection_flops

SHAPES = Path(__file__).parent / "fixtures" / "model_shapes"
QKVO = ["q_proj", "k_proj", "v_proj", "o_proj"]


def test_llava_7b_is_counted_from_its_config_alone():
    """The config holds public numbers only (no weights here); the total is llava-hf/llava-1.5-7b-hf's 7.06B."""
    shape = model_shape(SHAPES / "llava-1.5-7b")
    assert shape.total_params == 7_063_427_072
    assert shape.layers == 32 and shape.head_params == shape.embedding_params == 32064 * 4096
    assert shape.vision_params == 303_507_456  # CLIP ViT-L/14 at 336 px
    assert shape.projector_params == 1024 * 4096 + 4096 + 4096 * 4096 + 4096
    assert (shape.image_tokens, shape.vision_positions) == (576, 577)
    assert shape.lora_params(128, QKVO) == 134_217_728  # tive's 7B gradient size (README)
    assert shape.lora_params(128, QKVO, layers=1) == 134_217_728 // 32


def test_the_accounting_of_training_and_of_the_selection():
    shape = model_shape(SHAPES / "llava-1.5-7b")
    text_only = Tokens(records=1000, sampled=10, text_tokens=500.0, images=0.0, image_tokens=0.0)
    body = shape.layer_params + shape.head_params
    assert epoch_flops(shape, text_only, gradient_checkpointing=False)["flops"] == 6 * body * 500 * 1000
    assert epoch_flops(shape, text_only)["flops"] == 8 * body * 500 * 1000  # finetune.sh's gradient checkpointing
    plain = epoch_flops(shape, text_only, gradient_checkpointing=False)["flops"]
    full = selection_flops(shape, text_only, warmup_records=80, epochs=1, lora_rank=1, lora_targets=QKVO,
                           last_layers=None)
    # Same model, every layer: a features pass is a forward and a backward without weight gradients, 4/6 of an
    # epoch (plus the LoRA matrices' own small terms); the warm-up on 8% of the records is 8% of that.
    assert full["features_flops"] / plain == pytest.approx(4 / 6, rel=1e-3)
    assert full["warmup_flops"] / plain == pytest.approx(0.08 * 4 / 6, rel=1e-3)
    costs = [selection_flops(shape, text_only, warmup_records=80, epochs=1, lora_rank=1, lora_targets=QKVO,
                             last_layers=k)["features_flops"] for k in (1, 4, 32)]
    assert costs[0] < costs[1] < costs[2] == pytest.approx(full["features_flops"])
    # last:1 still pays the whole forward: 2 of 6, plus the backward through the head and one of 32 layers.
    expected = (2 * body + 2 * (shape.head_params + shape.layer_params / 32)) * 500 * 1000
    assert costs[0] == pytest.approx(expected, rel=1e-3)
    with_images = Tokens(records=1000, sampled=10, text_tokens=500.0, images=1.0, image_tokens=576.0)
    vision = epoch_flops(shape, with_images, False)["flops"] - 6 * body * (500 + 576) * 1000
    assert vision == pytest.approx(1000 * (2 * shape.vision_params * 577 + 6 * shape.projector_params * 576))


def test_estimate_prices_the_selection_against_one_epoch_of_the_target(small_data: Path, tmp_path: Path, capsys):
    run = tmp_path / "run"
    images = str(small_data.parent / "images")
    assert main(["prepare", str(small_data), "--out", str(run), "--images", images, "--task-field", "dataset"]) == 0
    args = ["estimate", str(run), "--model", "tiny", "--proj-dim", "64", "--grad-batch-size", "4", "--device", "cpu",
            "--warmup-steps", "1", "--feature-batches", "1", "--token-records", "1000"]
    assert main([*args, "--target-model", str(tmp_path / "nowhere")]) == 2
    assert "--target-model" in capsys.readouterr().err
    assert main([*args, "--target-model", str(SHAPES / "llava-1.5-7b"), "--layers", "last:1"]) == 0
    printed = capsys.readouterr().out
    flops = json.loads((run / "estimate.json").read_text())["flops"]
    assert flops["target"]["total_params"] == 7_063_427_072 and not flops["target"]["is_reference"]
    assert flops["layers"] == "last:1" and flops["selection"]["backward_layers"] == 1
    # The token counts are the run's own records as the reference encodes them (all 140 sampled here).
    from tive.model.encode import Encoder
    from tive.model.loading import load_processor
    from tive.rundir import candidate_rows, load_prepared, read_manifest

    dataset, _ = load_prepared(run)
    records = [dataset.records[row["index"]] for row in candidate_rows(read_manifest(run))]
    tokens = measure_tokens(Encoder(load_processor(run / "base_model")), records, len(records))
    assert flops["tokens"]["sampled"] == 140
    assert flops["tokens"]["text_per_record"] == pytest.approx(tokens.text_tokens)
    assert flops["tokens"]["images_per_record"] == pytest.approx(tokens.images)
    assert flops["epoch"]["image_tokens_per_image"] == 576  # the target's own, not the tiny reference's
    assert flops["epoch"]["tokens_per_record"] == pytest.approx(tokens.text_tokens + tokens.images * 576)
    share = flops["selection"]["flops"] / flops["epoch"]["flops"]
    assert flops["selection_share_of_epoch"] == pytest.approx(share)
    assert share < 0.001  # a tiny reference for a 7B target
    assert f"selection ~ {100 * share:.2g}% of one epoch" in printed and "llava-1.5-7b" in printed
    assert flops["epoch"]["measured"] is None and "not timed (no weights here" in printed
    # A target whose weights are here is also timed: full fine-tuning steps, scaled to every record.
    assert main([*args, "--target-model", str(run / "base_model"), "--devices", "2"]) == 0
    measured = json.loads((run / "estimate.json").read_text())["flops"]["epoch"]["measured"]
    assert measured["seconds_per_record"] > 0
    assert measured["seconds"] == pytest.approx(140 * measured["seconds_per_record"] / 2)
    assert "one epoch of the target measured the same way" in capsys.readouterr().out


def test_target_model_is_recorded_and_reported(small_run: Path, tmp_path: Path):
    run = tmp_path / "run"
    shutil.copytree(small_run, run)
    target = str(SHAPES / "llava-1.5-7b")
    assert main(["warmup", str(run), "--model", "tiny", "--seed", "1", "--epochs", "2", "--target-model", target]) == 0
    import yaml

    assert yaml.safe_load((run / "config.yaml").read_text())["warmup"]["target_model"] == target
    assert main(["report", str(run)]) == 0
    html = (run / "report.html").read_text()
    assert "subset is for" in html and "llava-1.5-7b" in html


@pytest.mark.parametrize("text_tokens", [100.0, 300.0, 1000.0])
def test_the_documented_cheap_configuration_is_under_a_tenth_of_an_epoch_of_llava_7b(text_tokens: float):
    """README, Cheaper selection: a ~1B LLaVA-layout reference with --layers last:1, the authors' warm-up, against
    one epoch of LLaVA-1.5-7B on 665K records; selecting with the 7B model itself costs over half an epoch."""
    target = model_shape(SHAPES / "llava-1.5-7b")
    proxy = model_shape(SHAPES / "llava-tinyllama-1.1b")
    tokens = Tokens(records=665_298, sampled=0, text_tokens=text_tokens, images=0.94, image_tokens=576.0)

    def share(reference, layers, checkpointing):
        cost = selection_flops(reference, tokens, warmup_records=0.08 * 665_298, epochs=1, lora_rank=128,
                               lora_targets=QKVO, last_layers=layers)["flops"]
        return cost / epoch_flops(target, tokens, gradient_checkpointing=checkpointing)["flops"]

    assert share(proxy, 1, True) <= share(proxy, 1, False) <= 0.10
    assert share(target, None, True) > 0.5 and share(target, None, False) > 0.7
