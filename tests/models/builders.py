"""Tiny random-weight checkpoints of real vision-language architectures, built from config objects.

Each builder writes a directory laid out like the architecture's published checkpoint — the model saved with
`save_pretrained`, its processor (image processor with the PIL backend, a tokenizer of the architecture's own
tokenizer class trained here on a small corpus, with the architecture's special tokens) and the architecture's
real chat template — so that `tive` loads it exactly as it would load the real one: through `AutoProcessor` and
`AutoModelForImageTextToText`. Nothing is downloaded.

The chat templates are the published ones (llava-hf/llava-1.5-7b-hf, llava-hf/llava-v1.6-mistral-7b-hf,
Qwen/Qwen2-VL-7B-Instruct (also used by Qwen2.5-VL), HuggingFaceM4/Idefics3-8B-Llama3, HuggingFaceTB/SmolVLM).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

# ------------------------------------------------------------------------------------------ chat templates
LLAVA_15_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}"
    "{# Render all images first #}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}{# Render all text next #}{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}"
    "{% endfor %}{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

LLAVA_NEXT_MISTRAL_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' %}"
    "{{ '<<SYS>>\n' + message['content'][0]['text'] + '\n<</SYS>>\n\n' }}"
    "{% elif message['role'] == 'user' %}{{ '[INST] ' }}{# Render all images first #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{# Render all text next #}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] }}{% endfor %}{{' [/INST]' }}{% elif message['role'] == 'assistant' %}"
    "{{ ' ' + message['content'][0]['text'] + '</s> '}}{% else %}"
    "{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)

QWEN2_VL_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}<|im_start|>system\n"
    "You are a helpful assistant.<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n{% else %}"
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: "
    "{% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_IDEFICS3_BODY = (
    "{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
IDEFICS3_TEMPLATE = "<|begin_of_text|>" + _IDEFICS3_BODY
SMOLVLM_TEMPLATE = "<|im_start|>" + _IDEFICS3_BODY

# A small corpus for the tokenizers: the words of the demo data and of the tests' records.
CORPUS = [
    "What color is the shape? It is red. The answer is blue green yellow purple orange.",
    "How many circles are there? There are 3 circles and 2 squares, 1 triangle, 4 diamonds and 5 crosses.",
    "Describe the image. A red circle on a white background, next to a light gray square on cream.",
    "Answer with the option's letter from the given choices directly. A B C D E",
    "Which shape is on the left? Where is the triangle? Is there a cross? yes no",
    "Read the text in the image. Compare both images. And now? Look again. Describe it.",
    "You are a helpful assistant. Answer the question using a single word or phrase.",
    "0 1 2 3 4 5 6 7 8 9 10 11 12 . , ; : ! ? ' \" ( ) [ ] { } - _ / \\ @ # $ % & * + = < > | ~ ^",
] * 8


@dataclass
class Architecture:
    """What the tests need to know about one architecture's tiny checkpoint."""

    name: str
    build: Callable[[Path, int], Path]
    end_of_turn: str  # what closes an assistant turn in the labels (the template's marker, or the EOS tive adds)
    vision_prefixes: tuple[str, ...]  # module-name prefixes of the vision tower (never adapted)
    config_classes: str  # for the README table
    needs: list[str] = field(default_factory=list)  # optional Python packages the processor needs
    template_closes_answers: bool = True  # False: the template ends an answer with nothing, tive adds the EOS


def _train_bpe(specials: list[str], metaspace: bool, vocab_size: int = 600) -> tuple[dict[str, int], list]:
    """A BPE vocabulary and merges trained on CORPUS: byte-level (GPT-2/Qwen/Llama-3) or metaspace (Llama-2)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    if metaspace:
        bpe = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
        bpe.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
        alphabet = sorted({ch for text in CORPUS for ch in text.replace(" ", "▁")} | {"▁"})
        # Byte-fallback tokens so that any character still encodes (as Llama's tokenizer does).
        specials = specials + [f"<0x{b:02X}>" for b in range(256)]
    else:
        bpe = Tokenizer(models.BPE())
        bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=alphabet, show_progress=False
    )
    bpe.train_from_iterator(CORPUS, trainer)
    model = json.loads(bpe.to_str())["model"]
    return model["vocab"], [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]


def _save(model, processor, out_dir: Path, video_processor: dict | None = None) -> Path:
    """Save like the published checkpoint; `video_processor` is the video processor's config, for processors
    that have one (built here without it: it needs torchvision), written into processor_config.json as
    transformers does."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    if video_processor is not None:
        path = out_dir / "processor_config.json"
        config = json.loads(path.read_text())
        config["video_processor"] = video_processor
        path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return out_dir


def _seeded(seed: int, make):
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return make()


def _tiny_llama(tokenizer, cls_name: str = "LlamaConfig", **extra):
    import transformers

    return getattr(transformers, cls_name)(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **extra,
    )


def _tiny_clip():
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8
    )


def _llama_tokenizer():
    """A Llama-2 style tokenizer (metaspace BPE with byte fallback) that puts BOS before every text, as the
    LLaVA-1.5 and LLaVA-NeXT tokenizers do (`add_bos_token: true` in their tokenizer_config.json)."""
    from transformers import LlamaTokenizer

    vocab, merges = _train_bpe(["<unk>", "<s>", "</s>"], metaspace=True)
    tokenizer = LlamaTokenizer(
        vocab=vocab, merges=merges, unk_token="<unk>", bos_token="<s>", eos_token="</s>", add_bos_token=True
    )
    tokenizer.add_special_tokens({"pad_token": "<pad>"})
    tokenizer.add_tokens(["<image>"], special_tokens=True)
    tokenizer.image_token = "<image>"
    tokenizer.image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    return tokenizer


# ------------------------------------------------------------------------------------------------ LLaVA-1.5
def build_llava(out_dir: Path, seed: int = 0) -> Path:
    """llava-hf/llava-1.5 layout: CLIP vision tower + Llama, LlavaProcessor, the llava-hf chat template."""
    from transformers import CLIPImageProcessorPil, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    tokenizer = _llama_tokenizer()
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=tokenizer,
        patch_size=8,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAVA_15_TEMPLATE,
    )
    config = LlavaConfig(
        vision_config=_tiny_clip(),
        text_config=_tiny_llama(tokenizer),
        image_token_index=tokenizer.image_token_id,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
    )
    return _save(_seeded(seed, lambda: LlavaForConditionalGeneration(config)), processor, out_dir)


# ----------------------------------------------------------------------------------------------- LLaVA-NeXT
def build_llava_next(out_dir: Path, seed: int = 0) -> Path:
    """llava-hf/llava-v1.6-mistral layout: anyres tiling (image_grid_pinpoints), CLIP + Mistral, [INST] template."""
    from transformers import (
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextImageProcessorPil,
        LlavaNextProcessor,
    )

    pinpoints = [[32, 64], [64, 32], [64, 64]]
    tokenizer = _llama_tokenizer()
    processor = LlavaNextProcessor(
        image_processor=LlavaNextImageProcessorPil(
            size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, image_grid_pinpoints=pinpoints
        ),
        tokenizer=tokenizer,
        patch_size=8,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAVA_NEXT_MISTRAL_TEMPLATE,
    )
    config = LlavaNextConfig(
        vision_config=_tiny_clip(),
        text_config=_tiny_llama(tokenizer, "MistralConfig", sliding_window=None),
        image_token_index=tokenizer.image_token_id,
        image_grid_pinpoints=pinpoints,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
    )
    return _save(_seeded(seed, lambda: LlavaNextForConditionalGeneration(config)), processor, out_dir)


# ----------------------------------------------------------------------------------------- Qwen2-VL / 2.5-VL
QWEN_SPECIALS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>",
    "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
    "<|image_pad|>", "<|video_pad|>",
]


def _qwen_tokenizer():
    from transformers import Qwen2Tokenizer

    vocab, merges = _train_bpe(QWEN_SPECIALS, metaspace=False)
    tokenizer = Qwen2Tokenizer(
        vocab=vocab, merges=merges, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token=None
    )
    tokenizer.add_special_tokens({"additional_special_tokens": QWEN_SPECIALS[1:]})
    return tokenizer


def _build_qwen(out_dir: Path, seed: int, version: str) -> Path:
    import transformers
    from transformers import Qwen2VLImageProcessorPil

    from tive.model.loading import processor_without_video

    tokenizer = _qwen_tokenizer()
    ids = {name: tokenizer.convert_tokens_to_ids(f"<|{name}|>") for name in ("image_pad", "video_pad")}
    image_processor = Qwen2VLImageProcessorPil(
        min_pixels=28 * 28, max_pixels=28 * 28 * 12, patch_size=14, merge_size=2, temporal_patch_size=2
    )
    prefix = "Qwen2VL" if version == "2" else "Qwen2_5_VL"
    processor_cls = processor_without_video(getattr(transformers, f"{prefix}Processor"))
    processor = processor_cls(image_processor=image_processor, tokenizer=tokenizer, chat_template=QWEN2_VL_TEMPLATE)
    text = getattr(transformers, f"{prefix}TextConfig")(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0},
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    if version == "2":
        vision = transformers.Qwen2VLVisionConfig(
            depth=2, embed_dim=32, hidden_size=64, num_heads=4, mlp_ratio=2, patch_size=14, spatial_merge_size=2
        )
    else:
        vision = transformers.Qwen2_5_VLVisionConfig(
            depth=2, hidden_size=32, intermediate_size=64, num_heads=4, out_hidden_size=64, patch_size=14,
            spatial_merge_size=2, window_size=56, fullatt_block_indexes=[1],
        )
    config = getattr(transformers, f"{prefix}Config")(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["image_pad"],
        video_token_id=ids["video_pad"],
        vision_start_token_id=tokenizer.convert_tokens_to_ids("<|vision_start|>"),
        vision_end_token_id=tokenizer.convert_tokens_to_ids("<|vision_end|>"),
    )
    model_cls = getattr(transformers, f"{prefix}ForConditionalGeneration")
    video = {
        "video_processor_type": "Qwen2VLVideoProcessor", "patch_size": 14, "temporal_patch_size": 2, "merge_size": 2,
        "size": {"shortest_edge": 28 * 28, "longest_edge": 28 * 28 * 12}, "image_mean": image_processor.image_mean,
        "image_std": image_processor.image_std, "do_resize": True, "do_normalize": True, "do_rescale": True,
    }
    return _save(_seeded(seed, lambda: model_cls(config)), processor, out_dir, video)


def build_qwen2_vl(out_dir: Path, seed: int = 0) -> Path:
    """Qwen/Qwen2-VL layout: native-resolution patches merged 2x2 (<|image_pad|> x grid), M-RoPE, ChatML template."""
    return _build_qwen(out_dir, seed, "2")


def build_qwen2_5_vl(out_dir: Path, seed: int = 0) -> Path:
    """Qwen/Qwen2.5-VL layout: as Qwen2-VL with a windowed-attention vision tower."""
    return _build_qwen(out_dir, seed, "2.5")


# -------------------------------------------------------------------------------------- Idefics3 / SmolVLM
def _idefics_tokenizer(bos: str, eos: str, adds_bos: bool):
    """A byte-level BPE tokenizer; with `adds_bos` it puts BOS before every text, as Llama-3's does (Idefics3's
    template renders `<|begin_of_text|>` too: tive must not end up with two)."""
    from transformers import PreTrainedTokenizerFast

    rows = [f"<row_{i + 1}_col_{j + 1}>" for i in range(6) for j in range(6)]
    image_tokens = ["<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>", *rows]
    vocab, merges = _train_bpe([bos, eos, "<pad>"], metaspace=False)
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    bpe = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    if adds_bos:
        from tokenizers import processors

        bpe.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, vocab[bos])]
        )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token=bos, eos_token=eos, pad_token="<pad>")
    tokenizer.add_special_tokens({"additional_special_tokens": image_tokens})
    return tokenizer


def _tiny_idefics_vision(cls):
    return cls(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32,
               patch_size=8)


def build_idefics3(out_dir: Path, seed: int = 0) -> Path:
    """HuggingFaceM4/Idefics3 layout: image splitting into a row/col grid + global image, pixel shuffle, Llama-3."""
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessorPil,
        Idefics3Processor,
        Idefics3VisionConfig,
    )

    tokenizer = _idefics_tokenizer("<|begin_of_text|>", "<|end_of_text|>", adds_bos=True)
    processor = Idefics3Processor(
        image_processor=Idefics3ImageProcessorPil(
            size={"longest_edge": 64}, max_image_size={"longest_edge": 32}, do_image_splitting=True
        ),
        tokenizer=tokenizer,
        image_seq_len=4,  # ((32 / 8) ** 2) / scale_factor ** 2
        chat_template=IDEFICS3_TEMPLATE,
    )
    config = Idefics3Config(
        vision_config=_tiny_idefics_vision(Idefics3VisionConfig),
        text_config=_tiny_llama(tokenizer),
        scale_factor=2,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
    )
    return _save(_seeded(seed, lambda: Idefics3ForConditionalGeneration(config)), processor, out_dir)


def build_smolvlm(out_dir: Path, seed: int = 0) -> Path:
    """HuggingFaceTB/SmolVLM layout: the Idefics3 design with a SmolLM2 text model and <|im_start|> template."""
    from transformers import (
        SmolVLMConfig,
        SmolVLMForConditionalGeneration,
        SmolVLMImageProcessorPil,
        SmolVLMProcessor,
        SmolVLMVisionConfig,
    )

    from tive.model.loading import processor_without_video

    tokenizer = _idefics_tokenizer("<|im_start|>", "<|im_end|>", adds_bos=False)
    processor = processor_without_video(SmolVLMProcessor)(
        image_processor=SmolVLMImageProcessorPil(
            size={"longest_edge": 64}, max_image_size={"longest_edge": 32}, do_image_splitting=True
        ),
        tokenizer=tokenizer,
        video_processor=None,
        image_seq_len=4,
        chat_template=SMOLVLM_TEMPLATE,
    )
    config = SmolVLMConfig(
        vision_config=_tiny_idefics_vision(SmolVLMVisionConfig),
        text_config=_tiny_llama(tokenizer),
        scale_factor=2,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
    )
    video = {
        "video_processor_type": "SmolVLMVideoProcessor", "size": {"longest_edge": 64},
        "max_image_size": {"longest_edge": 32}, "fps": 1, "num_frames": 64, "do_resize": True, "do_normalize": True,
        "do_rescale": True, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
    }
    return _save(_seeded(seed, lambda: SmolVLMForConditionalGeneration(config)), processor, out_dir, video)


ARCHITECTURES = {
    arch.name: arch
    for arch in [
        Architecture("llava", build_llava, "</s>", ("model.vision_tower", "model.multi_modal_projector"),
                     "LlavaConfig (CLIPVisionConfig + LlamaConfig)", template_closes_answers=False),
        Architecture("llava_next", build_llava_next, "</s>", ("model.vision_tower", "model.multi_modal_projector"),
                     "LlavaNextConfig (CLIPVisionConfig + MistralConfig)"),
        Architecture("qwen2_vl", build_qwen2_vl, "<|im_end|>", ("model.visual",),
                     "Qwen2VLConfig (Qwen2VLVisionConfig + Qwen2VLTextConfig)"),
        Architecture("qwen2_5_vl", build_qwen2_5_vl, "<|im_end|>", ("model.visual",),
                     "Qwen2_5_VLConfig (Qwen2_5_VLVisionConfig + Qwen2_5_VLTextConfig)"),
        Architecture("idefics3", build_idefics3, "<end_of_utterance>", ("model.vision_model", "model.connector"),
                     "Idefics3Config (Idefics3VisionConfig + LlamaConfig)"),
        Architecture("smolvlm", build_smolvlm, "<end_of_utterance>", ("model.vision_model", "model.connector"),
                     "SmolVLMConfig (SmolVLMVisionConfig + LlamaConfig)", needs=["num2words"]),
    ]
}
