"""Each supported architecture, as a tiny random-weight checkpoint built from config objects, through tive.

Per architecture: it loads through AutoProcessor + AutoModelForImageTextToText; the labels cover exactly the
answer tokens (with the template's end-of-turn marker) for single-image, later-turn-image, multi-image and
text-only records; LoRA goes into the language model only; batched per-record gradients equal the loop (also
under gradient checkpointing); and `tive run --model DIR` runs end to end.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from tests.models.conftest import architecture_params
from tive.cli import main
from tive.features.grads import BatchedGradients, record_gradient
from tive.model.encode import IGNORE_INDEX, collate, encode_record, image_token_ids
from tive.model.loading import (
    LoraSettings,
    add_lora,
    checkpoint_in_eval,
    enable_gradient_checkpointing,
    language_model_prefix,
    load_base,
    load_processor,
    lora_gradients_only,
    lora_parameters,
)

ARCHS = architecture_params()

# The transformers classes each checkpoint must load as.
EXPECTED_CLASSES = {
    "llava": ("LlavaForConditionalGeneration", "LlavaProcessor", "model.language_model"),
    "llava_next": ("LlavaNextForConditionalGeneration", "LlavaNextProcessor", "model.language_model"),
    "qwen2_vl": ("Qwen2VLForConditionalGeneration", "Qwen2VLProcessor", "model.language_model"),
    "qwen2_5_vl": ("Qwen2_5_VLForConditionalGeneration", "Qwen2_5_VLProcessor", "model.language_model"),
    "idefics3": ("Idefics3ForConditionalGeneration", "Idefics3Processor", "model.text_model"),
    "smolvlm": ("SmolVLMForConditionalGeneration", "SmolVLMProcessor", "model.text_model"),
}


def labelled_runs(processor, encoded) -> list[str]:
    """The decoded runs of consecutive labelled tokens; every label must equal its input token."""
    runs, current = [], []
    for token, label in zip(encoded["input_ids"].tolist(), encoded["labels"].tolist()):
        if label != IGNORE_INDEX:
            assert label == token
            current.append(token)
        elif current:
            runs.append(processor.tokenizer.decode(current))
            current = []
    if current:
        runs.append(processor.tokenizer.decode(current))
    return runs


@pytest.mark.parametrize("arch", ARCHS)
def test_checkpoint_loads_through_the_auto_classes(arch, checkpoints):
    from transformers import AutoModelForImageTextToText

    model, processor = load_base(checkpoints(arch))
    model_class, processor_class, decoder = EXPECTED_CLASSES[arch]
    assert type(model).__name__ == model_class
    assert type(model) is AutoModelForImageTextToText.from_config(model.config).__class__
    assert type(processor).__name__ == processor_class
    assert type(processor.image_processor).__name__.endswith("Pil")  # no torchvision needed
    assert processor.chat_template and language_model_prefix(model) == decoder


@pytest.mark.parametrize("arch", [a for a in ARCHS if a.values[0] in ("qwen2_vl", "qwen2_5_vl", "smolvlm")])
def test_video_capable_processors_load_without_torchvision(arch, checkpoints):
    """AutoProcessor needs torchvision for these processors' video processor; tive loads them image-only."""
    from transformers import AutoProcessor
    from transformers.utils import is_torchvision_available

    if is_torchvision_available():
        pytest.skip("torchvision is installed: AutoProcessor loads the video processor itself")
    with pytest.raises(ImportError, match="(?i)torchvision"):
        AutoProcessor.from_pretrained(checkpoints(arch))
    processor = load_processor(checkpoints(arch))
    assert "video_processor" not in processor.get_attributes()
    saved = json.loads((checkpoints(arch) / "processor_config.json").read_text())
    assert saved["processor_class"] == EXPECTED_CLASSES[arch][1] and "video_processor" in saved


@pytest.mark.parametrize("case", ["single_image", "image_in_later_turn", "multi_image", "text_only"])
@pytest.mark.parametrize("arch", ARCHS)
def test_labels_cover_exactly_the_answers_and_end_of_turn(arch, case, checkpoints, records):
    _, processor = load_base(checkpoints(arch))
    record, answers = records[case]
    encoded = encode_record(processor, record)
    end_of_turn = checkpoints.arch(arch).end_of_turn
    assert [run.strip() for run in labelled_runs(processor, encoded)] == [a + end_of_turn for a in answers]
    image_ids = torch.tensor(sorted(image_token_ids(processor)))
    is_image = torch.isin(encoded["input_ids"], image_ids)
    assert not (is_image & (encoded["labels"] != IGNORE_INDEX)).any()
    assert bool(is_image.any()) == bool(record.images)
    for key in ("attention_mask", "labels"):
        assert encoded[key].shape == encoded["input_ids"].shape


@pytest.mark.parametrize("case", ["single_image", "image_in_later_turn", "multi_image", "text_only"])
@pytest.mark.parametrize("arch", ARCHS)
def test_inputs_are_the_processors_own_with_exactly_one_bos(arch, case, checkpoints, records):
    """What the model saw in training: processor(text=apply_chat_template(msgs), images), one BOS, and only the
    documented end-of-turn additions (the EOS after each answer where the template closes none)."""
    from tive.model.encode import Encoder, load_images, record_messages

    _, processor = load_base(checkpoints(arch))
    record, answers = records[case]
    encoded = encode_record(processor, record)
    text = processor.apply_chat_template(record_messages(record), tokenize=False)
    images = load_images(record)
    reference = processor(text=[text], images=images or None, return_tensors="pt")["input_ids"][0].tolist()
    tokenizer = processor.tokenizer
    bos = tokenizer.bos_token_id
    plan = Encoder(processor).plan
    if plan.bos == "template" and tokenizer("x")["input_ids"][:1] == [bos]:
        assert reference[:2] == [bos, bos]  # the template renders BOS and the tokenizer adds another
        reference = reference[1:]
    ids = encoded["input_ids"].tolist()
    if checkpoints.arch(arch).template_closes_answers:
        assert plan.eos_after_answer is None
        assert ids == reference
    else:
        eos = tokenizer.eos_token_id
        assert plan.eos_after_answer == eos
        added = [k for k, token in enumerate(ids) if token == eos]
        assert len(added) == len(answers)
        labels = encoded["labels"].tolist()
        assert all(labels[k] == eos and labels[k - 1] != IGNORE_INDEX for k in added)  # right after each answer
        assert [token for k, token in enumerate(ids) if k not in added] == reference
    if bos is not None and plan.bos != "none":
        assert ids[0] == bos and ids.count(bos) == 1
    else:
        assert plan.bos == "none"
    assert len(encoded["labels"]) == len(ids) == len(encoded["attention_mask"])


LORA_NAMES = [
    "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "qkv", "proj", "fc1", "fc2",
    "out_proj",
]


@pytest.mark.parametrize("arch", ARCHS)
def test_lora_goes_into_the_language_model_only(arch, checkpoints):
    model, _ = load_base(checkpoints(arch))
    vision = checkpoints.arch(arch).vision_prefixes
    names = [name for name, _ in model.named_modules()]
    # The vision tower has modules of these names too, so a plain list of names would adapt it.
    assert any(n.startswith(vision) and n.rsplit(".", 1)[-1] in LORA_NAMES for n in names)
    scope = language_model_prefix(model)
    targets = [name for name in LORA_NAMES if any(n.startswith(scope) and n.endswith("." + name) for n in names)]
    peft_model = add_lora(model, LoraSettings(rank=2, alpha=4, targets=LORA_NAMES, modules_to_save=[]), seed=0)
    adapted = {
        name.removeprefix("base_model.model.").rsplit(".lora_", 1)[0] for name, _ in lora_parameters(peft_model)
    }
    assert adapted and all(name.startswith(scope + ".") for name in adapted)
    assert not any(name.startswith(vision) for name in adapted)
    assert {name.rsplit(".", 1)[-1] for name in adapted} == set(targets)
    layers = model.config.get_text_config().num_hidden_layers
    assert len(adapted) == layers * len(targets)  # every layer's every target, nothing else


@pytest.mark.parametrize("arch", ARCHS)
def test_batched_gradients_equal_the_loop_also_with_gradient_checkpointing(arch, checkpoints, records):
    from peft import LoraConfig, get_peft_model

    base, processor = load_base(checkpoints(arch))
    scope = re.escape(language_model_prefix(base))
    config = LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=rf"{scope}\..*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)$",
        init_lora_weights=False,  # random B as well as A, so every LoRA matrix has a gradient
    )
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = get_peft_model(base, config)
    model.eval()
    named = lora_gradients_only(model)
    params = [p for _, p in named]
    encoded = [encode_record(processor, record) for record, _ in records.values()]
    assert len({len(e["input_ids"]) for e in encoded}) > 1  # padding happens
    pad = processor.tokenizer.pad_token_id
    loop = torch.stack([record_gradient(model, params, collate([e], pad)) for e in encoded])
    assert (loop.norm(dim=1) > 0).all()
    for checkpointing in (False, True):
        if checkpointing:
            enable_gradient_checkpointing(model)
            checkpoint_in_eval(model)
        batched = BatchedGradients(model, named)(collate(encoded, pad))
        relative = (batched - loop).norm(dim=1) / loop.norm(dim=1)
        assert relative.max() <= 1e-5, (checkpointing, relative)
        assert all(p.grad is None for p in params)


@pytest.mark.parametrize("arch", ARCHS)
def test_tive_run_end_to_end_on_the_checkpoint(arch, checkpoints, demo_data, tmp_path, capsys):
    out = tmp_path / "run"
    args = [
        "run", str(demo_data), "--images", str(demo_data.parent / "images"), "--task-field", "dataset",
        "--out", str(out), "--model", str(checkpoints(arch)), "--proj-dim", "64", "--epochs", "1",
        "--lora-rank", "8", "--budget", "0.25",
    ]
    assert main(args) == 0, capsys.readouterr().err
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(rows) == 40 and all(row["grad_norm"] > 0 for row in rows)
    assert sum(row["selected"] for row in rows) == 10
    assert np.load(out / "features" / "features.npy").shape == (40, 64)
    warm = json.loads((out / "warmup" / "warmup.json").read_text())
    assert warm["lora_scope"] == EXPECTED_CLASSES[arch][2] and warm["steps"] >= 1
    assert not (out / "base_model").exists()  # the checkpoint is used where it is
    assert len(json.loads((out / "subset.json").read_text())) == 10
