"""Word-like image slots: the bench's default vision (issue 19, item 1).

An image becomes 9 slot tokens, one per cell of the world's 3x3 grid. Each slot is the SUM of the language model's
own input embeddings of the words that describe its cell: colour, shape, row and column for a shape ("empty", row
and column for an empty cell); for an image of a number, one slot per digit (the digit's word, the number's
colour and where the digit stands: middle row, center column for one digit, left and right for two) and "empty"
slots after them. The image reaches the language model as words it already reads, the
miniature of LLaVA's frozen, pre-trained encoder whose outputs the language model can use from the first step.

**Encoder: a frozen perfect-perception lookup**, not a trained tower. `write_world` records the scene it drew
for every image it writes (`world/scenes.json`, keyed by the SHA-256 of the image's mode, size and pixels,
`world.pixel_digest`); `SlotImageProcessor` looks each image up by that digest. The encoder is therefore a
function of the image alone (its pixels; never the question or the answer), and it is exact: what the bench
studies is data selection for instruction tuning, so perception errors would only add noise that no selection
method can act on, and a tower trained to >= 99% slot accuracy would cost CPU minutes per world for nothing the
lookup does not give. An image the table does not hold is an error naming it; data without recorded scenes
(`--train/--eval`) uses the pixel tower (`--vision pixels`).

The model is LLaVA's (`SlotLlavaForConditionalGeneration` subclasses `LlavaForConditionalGeneration`, only
`get_image_features` differs), registered in-process with transformers' Auto classes under the model type
`tive_slot_llava` (no remote code), so the product's own loader (`tive.model.loading.load_base`) loads it and
TIVE's stages put LoRA on its language model as on any LLaVA. Its processor is a `LlavaProcessor` whose image
processor returns, per image, a (4, 3, 3) float array of token ids (-1: no word), so the processor expands
`<image>` to 9 placeholders (patch size 1) exactly as it does for pixels.

The tokenizer (`build_slot_model`) is a byte-level BPE with a prefix space on every segment, so a word is the same
token at the start of an answer and inside a sentence, and every digit is its own token; every word of
`SLOT_WORDS` is checked to be one token.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tive.errors import TiveError

MODEL_TYPE = "tive_slot_llava"
SLOTS = 9
WORDS_PER_SLOT = 4  # colour, shape, row, column (or for a number: digit, colour, row, column)
CHANNELS = 3  # pixel_values channels: word 1, word 2, words 3 and 4 packed as id3 * PACK + id4 (see slot_pixels)
PACK = 4096  # the largest vocabulary the packing allows (float32 holds integers below 2**24 exactly)
EMPTY = "empty"
DIGITS = tuple(str(d) for d in range(10))


def slot_words() -> tuple[str, ...]:
    """Every colour, shape, row, column, digit, count and yes/no word (each one token of the bench tokenizer)."""
    from tive.bench.world import COLS, NUMBER_WORDS, PLURALS, ROWS
    from tive.demo_data import COLORS, SHAPES

    words = [*COLORS, *SHAPES, *PLURALS.values(), *ROWS, *COLS, *DIGITS, *NUMBER_WORDS, "yes", "no", EMPTY]
    return tuple(dict.fromkeys(words))


def scene_slots(items: Iterable[tuple[str, str, int, int]]) -> list[list[str | None]]:
    """The 9 slots of a scene given as (colour, kind, row, col) items: [colour, kind, row word, column word] for an
    occupied cell, [empty, None, row word, column word] for an empty one, in reading order."""
    from tive.bench.world import COLS, GRID, ROWS

    cells: list[list[str | None]] = [[EMPTY, None, ROWS[r], COLS[c]] for r in range(GRID) for c in range(GRID)]
    for color, kind, row, col in items:
        cells[row * GRID + col] = [color, kind, ROWS[row], COLS[col]]
    return cells


def number_slots(text: str, color: str) -> list[list[str | None]]:
    """The 9 slots of a number image: [digit, colour, "middle", column word] per digit, in reading order, then
    [empty, None, None, None]. Row and column say where the digit stands, as a scene's slots say where a shape
    stands: the column "center" for a one-digit number, "left" then "right" for two digits. (Measured on world
    seed 2: the places alone did not stop the model from ending a two-digit answer after its first digit, TextVQA's
    std over seeds with full data 5.9 against 6.5 without them; the 4,000-step prior did, 1.3.)"""
    from tive.bench.world import COLS, ROWS

    places = {1: (COLS[1],), 2: (COLS[0], COLS[2])}.get(len(text))
    if places is None:
        raise TiveError(f"number image {text!r}: the slot encoder reads numbers of one or two digits")
    cells: list[list[str | None]] = [[digit, color, ROWS[1], place] for digit, place in zip(text, places)]
    return cells + [[EMPTY, None, None, None] for _ in range(SLOTS - len(cells))]


def slot_encoding() -> str:
    """A fingerprint of what an image's slots hold (`scene_slots`, `number_slots` on fixed inputs): part of the
    language prior's cache key, so a prior trained on other slots is never reused."""
    from tive.io import sha256_json

    return sha256_json([scene_slots([("red", "circle", 0, 0), ("blue", "square", 2, 1)]),
                        number_slots("7", "red"), number_slots("42", "blue")])[:16]


def slot_ids(tokenizer: Any, slots: Sequence[Sequence[str | None]]) -> list[int]:
    """The 36 token ids (-1 for no word) of 9 slots of words, slot by slot."""
    out = []
    for slot in slots:
        for word in slot:
            out.append(-1 if word is None else word_id(tokenizer, word))
    return out


def slot_pixels(ids: Sequence[int]) -> np.ndarray:
    """36 slot token ids -> the (3, 3, 3) float32 `pixel_values` of one image: channels first (the processor
    infers the grid from the last two axes), words 3 and 4 packed into the third channel (-1 when both absent).

    Four channels would be read as channels-last by transformers' size inference, hence the packing.
    """
    grid = np.asarray(ids, dtype=np.int64).reshape(SLOTS, WORDS_PER_SLOT)
    third, fourth = grid[:, 2], grid[:, 3]
    if ((third < 0) != (fourth < 0)).any():
        raise TiveError("slot vision: a slot's row and column words must both be given or both be absent")
    packed = np.where(third < 0, -1, third * PACK + np.maximum(fourth, 0))
    channels = np.stack([grid[:, 0], grid[:, 1], packed], axis=0).reshape(CHANNELS, 3, 3)
    return channels.astype(np.float32)


def word_id(tokenizer: Any, word: str) -> int:
    """The one token of `word` (as it appears inside a sentence); an error when it is not one token."""
    ids = tokenizer(word, add_special_tokens=False)["input_ids"]
    if len(ids) == 2 and word.isdigit() and tokenizer.convert_ids_to_tokens(ids[0]) == "\u0120":
        ids = ids[1:]  # a number's digits follow one space token ("Ġ"); each digit is its own token
    if len(ids) != 1:
        raise TiveError(f"bench tokenizer: {word!r} is {len(ids)} tokens ({tokenizer.convert_ids_to_tokens(ids)}); "
                        "every slot word must be one token")
    return int(ids[0])


# ------------------------------------------------------------------------------------------------ processor


def _image_processor_class() -> type:
    from transformers.feature_extraction_utils import BatchFeature
    from transformers.image_processing_utils import BaseImageProcessor

    class SlotImageProcessor(BaseImageProcessor):
        """Image -> (4, 3, 3) token ids of its 9 slots, by the image's pixel digest in the recorded scene table.

        `table` maps a pixel digest to its 36 token ids; nothing but the image's pixels is looked at.
        """

        model_input_names = ["pixel_values"]

        def __init__(self, table: dict[str, list[int]] | None = None, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.table = dict(table or {})

        def __call__(self, images: Any, return_tensors: Any = None, **kwargs: Any) -> Any:
            return self.preprocess(images, return_tensors=return_tensors)

        def preprocess(self, images: Any, return_tensors: Any = None, **kwargs: Any) -> Any:
            from tive.bench.world import pixel_digest

            if not isinstance(images, (list, tuple)):
                images = [images]
            flat = []
            for image in images:
                flat.extend(image if isinstance(image, (list, tuple)) else [image])
            rows = []
            for image in flat:
                digest = pixel_digest(image.convert("RGB") if image.mode != "RGB" else image)
                ids = self.table.get(digest)
                if ids is None:
                    raise TiveError(
                        f"slot vision: no recorded scene for an image of size {image.size} (pixel digest "
                        f"{digest[:12]}); the slot encoder knows only the built-in world's images; use "
                        "--vision pixels for other data")
                rows.append(slot_pixels(ids))
            return BatchFeature({"pixel_values": np.stack(rows)}, tensor_type=return_tensors)

        def _merge_and_standardize_kwargs(self, **kwargs: Any) -> dict[str, Any]:
            return {"crop_size": {"height": 3, "width": 3}}

    SlotImageProcessor.__module__ = __name__
    return SlotImageProcessor


# ------------------------------------------------------------------------------------------------ model


def _model_classes() -> tuple[type, type]:
    import torch
    from transformers import LlavaConfig, LlavaForConditionalGeneration
    from transformers.modeling_outputs import BaseModelOutputWithPooling
    from transformers.models.llava.modeling_llava import LlavaModel

    class SlotLlavaConfig(LlavaConfig):
        """LLaVA's config under its own model type, so the Auto classes pick the slot model."""

        model_type = MODEL_TYPE

    class SlotLlavaModel(LlavaModel):
        """LLaVA whose image features are the sums of the language model's embeddings of each slot's words."""

        config_class = SlotLlavaConfig

        def get_image_features(self, pixel_values: Any, **kwargs: Any) -> Any:
            packed = pixel_values.double().round().long().flatten(2).transpose(1, 2)  # (images, 9, 3)
            third, fourth = packed[..., 2:].div(PACK, rounding_mode="floor"), packed[..., 2:].remainder(PACK)
            none = packed[..., 2:] < 0
            ids = torch.cat([packed[..., :2], third.masked_fill(none, -1), fourth.masked_fill(none, -1)], dim=-1)
            embed = self.get_input_embeddings()
            present = (ids >= 0).unsqueeze(-1)
            vectors = embed(ids.clamp(min=0)) * present
            features = vectors.sum(dim=2)
            return BaseModelOutputWithPooling(last_hidden_state=features, pooler_output=list(features))

    class SlotLlavaForConditionalGeneration(LlavaForConditionalGeneration):
        """`LlavaForConditionalGeneration` with `SlotLlavaModel` inside."""

        config_class = SlotLlavaConfig

        def __init__(self, config: Any) -> None:
            super().__init__(config)
            self.model = SlotLlavaModel(config)
            self.post_init()

    for cls in (SlotLlavaConfig, SlotLlavaModel, SlotLlavaForConditionalGeneration):
        cls.__module__ = __name__
    return SlotLlavaConfig, SlotLlavaForConditionalGeneration


_REGISTERED: dict[str, type] = {}


def register() -> dict[str, type]:
    """Register the slot model, config and image processor with transformers' Auto classes (once per process)."""
    if _REGISTERED:
        return _REGISTERED
    from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageTextToText

    config_class, model_class = _model_classes()
    processor_class = _image_processor_class()
    AutoConfig.register(MODEL_TYPE, config_class, exist_ok=True)
    AutoModelForImageTextToText.register(config_class, model_class, exist_ok=True)
    AutoImageProcessor.register(config_class, image_processor_classes={"pil": processor_class}, exist_ok=True)
    import transformers

    for cls in (config_class, model_class, processor_class):  # found by name when a saved checkpoint names it
        setattr(transformers, cls.__name__, cls)
    globals().update({cls.__name__: cls for cls in (config_class, model_class, processor_class)})
    _REGISTERED.update(config=config_class, model=model_class, image_processor=processor_class)
    return _REGISTERED


# ------------------------------------------------------------------------------------------------ building


def build_tokenizer(texts: Iterable[str], vocab_size: int) -> Any:
    """The bench's byte-level BPE: a prefix space on every segment (a word is one token wherever it stands),
    digits split one per token, and every slot word seeded so that it is one token (checked)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from tive.model.tiny import CHAT_TEMPLATE, IMAGE_TOKEN, SPECIAL_TOKENS

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.ByteLevel(add_prefix_space=True),
        pre_tokenizers.Split(Regex("[0-9]"), behavior="isolated"),
    ])
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    seed = [" ".join([word] * 20) for word in slot_words()] * 20
    bpe.train_from_iterator([*texts, *seed], trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                        extra_special_tokens={"image_token": IMAGE_TOKEN})
    tokenizer.chat_template = CHAT_TEMPLATE
    for word in slot_words():
        word_id(tokenizer, word)
    return tokenizer


# A smaller language model for `tive_proxy` (issue 21, item 4): the bench's tiny model (2 layers of width 128) at half
# the width, about a quarter of its decoder's parameters, as COINCIDE selects for a 7B model with a 2B one.
SLOT_SIZES = {"proxy": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2}}


def build_slot_model(out_dir: Path, texts: Iterable[str], table: dict[str, Sequence[Sequence[str | None]]],
                     seed: int, vocab_size: int = 2048, preset: str = "tiny") -> Path:
    """Build the slot model (random weights from `seed`) and its processor into `out_dir`.

    `table` maps pixel digests to slots of words (`scene_slots` / `number_slots`); it is stored as token ids in
    the image processor's config.
    """
    import torch
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaProcessor

    from tive.model import quiet_transformers
    from tive.model.tiny import CHAT_TEMPLATE, IMAGE_TOKEN, PRESETS

    quiet_transformers()
    classes = register()
    if vocab_size > PACK:
        raise TiveError(f"slot vision: vocabulary {vocab_size} above {PACK}, the largest the slot packing allows")
    tokenizer = build_tokenizer(texts, vocab_size)
    ids_table = {digest: slot_ids(tokenizer, slots) for digest, slots in table.items()}
    processor = LlavaProcessor(image_processor=classes["image_processor"](table=ids_table), tokenizer=tokenizer,
                               patch_size=1, vision_feature_select_strategy="full", chat_template=CHAT_TEMPLATE,
                               num_additional_image_tokens=0)
    # The vision tower is unused (image features come from the slots); a minimal CLIP keeps LLaVA's structure.
    vision = CLIPVisionConfig(hidden_size=8, intermediate_size=8, num_hidden_layers=1, num_attention_heads=1,
                              image_size=3, patch_size=1, num_channels=CHANNELS)
    shape = SLOT_SIZES[preset] if preset in SLOT_SIZES else PRESETS[preset]
    text = LlamaConfig(vocab_size=len(tokenizer), **shape, max_position_embeddings=1024,
                       pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id)
    config = classes["config"](vision_config=vision, text_config=text,
                               image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
                               vision_feature_select_strategy="full", vision_feature_layer=-1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = classes["model"](config)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


def read_scene_table(path: Path) -> dict[str, list[list[str | None]]]:
    """The world's recorded scenes: pixel digest -> 9 slots of words."""
    return json.loads(path.read_text())
