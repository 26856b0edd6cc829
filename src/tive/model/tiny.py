"""The built-in models `tiny` and `small`: LLaVA-architecture models that run the whole pipeline on a CPU.

They are built from config objects (a 2-layer CLIP vision tower on 32x32 images, 16 image tokens, and a Llama
text model: 2 layers of width 128 for `tiny`, 4 layers of width 512 for `small`, whose LoRA gradient has over a
million numbers — a realistic size to measure feature extraction on a CPU) with random weights, plus a
byte-level BPE tokenizer trained on the run's own texts. It is
saved with its processor like any Hugging Face checkpoint, so every later stage loads it through the same code
path as a real model (`AutoProcessor` + `AutoModelForImageTextToText`).

Random weights cannot learn through LoRA alone: attention adapters on a random text model cannot make a random
vision projector or random embeddings meaningful. The warm-up therefore also trains the multimodal projector,
the token embeddings and the output head of `tiny` (saved inside the adapter as `modules_to_save`). The gradient
features are still taken with respect to the LoRA matrices only, as in the method.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

IMAGE_TOKEN = "<image>"
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", IMAGE_TOKEN, "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]

# Turns start with a role tag and end with <|end|>; the assistant's <|end|> is trained so the model learns to stop.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '<image>' }}{% else %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|end|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)

IMAGE_SIZE = 32
PATCH_SIZE = 8

# Text-model sizes of the built-in presets (the vision tower is the same for both).
PRESETS = {
    "tiny": {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4},
    "small": {"hidden_size": 512, "intermediate_size": 1024, "num_hidden_layers": 4, "num_attention_heads": 8},
}


def build_tiny_model(
    out_dir: Path, texts: Iterable[str], seed: int, vocab_size: int = 2048, preset: str = "tiny",
    image_size: int = IMAGE_SIZE, patch_size: int = PATCH_SIZE,
) -> Path:
    """Build a built-in model and its processor from scratch and save them to `out_dir`.

    Args:
        out_dir: where the checkpoint is written (created).
        texts: the texts the tokenizer learns its vocabulary from (the run's instructions and answers).
        seed: seed of the random weights.
        vocab_size: upper bound of the BPE vocabulary.
        preset: a key of PRESETS.
        image_size: the vision tower's input size (LLaVA-1.5's is 336 with patch 14: 576 image tokens).
        patch_size: its patch size.
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        CLIPImageProcessorPil,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        PreTrainedTokenizerFast,
    )

    from tive.model import quiet_transformers

    quiet_transformers()
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": IMAGE_TOKEN},
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        chat_template=CHAT_TEMPLATE,
        num_additional_image_tokens=1,  # CLIP's class token, dropped by the "default" strategy
    )
    vision = CLIPVisionConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=image_size,
        patch_size=patch_size,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        **PRESETS[preset],
        max_position_embeddings=1024,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlavaForConditionalGeneration(config)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir
