"""FLOP accounting: the selection's cost against one fine-tuning epoch of the target model (`tive estimate`).

One accounting for both sides, per token of the language model, counting matrix products only (2 FLOPs per
parameter per token in a forward pass; attention's sequence-length terms and the projection's few additions per
gradient number are left out — each a few percent at 7B and 1-2K tokens):

- **forward**: 2 x (decoder layers' parameters + output head);
- **backward**: 2 x the parameters the gradient flows back *through* (input gradients), plus 2 x the parameters
  that *get* a gradient (weight gradients);
- **gradient checkpointing**: one more forward of the layers the backward covers;
- **vision tower**: a forward only (frozen in LLaVA's fine-tuning and in tive), 2 x its parameters x the positions
  it runs per image; the projector: forward (and, where trained, backward) on its image tokens.

So full fine-tuning of the language model and the projector, as LLaVA-1.5's `finetune.sh` runs it, is 6 x
parameters x tokens, 8 with its gradient checkpointing (`--gradient_checkpointing True`, its setting). The LoRA
warm-up runs the forward and the input gradients through every layer (LoRA sits in all of them): 4 x parameters x
tokens, plus the LoRA matrices' own small terms. A features pass is one forward and one backward per record; with
`--layers last:K` the backward covers only the output head and the last K layers.

Parameters are counted from the model's config alone (the model is built on torch's meta device: no weights are
read or allocated), so a 7B or 13B target needs only its `config.json`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tive.errors import TiveError

# Where the vision tower lives in the architectures tive supports (LLaVA / LLaVA-NeXT, Qwen2-VL, Idefics3 / SmolVLM).
_VISION_NAMES = ("vision_tower", "visual", "vision_model")


@dataclass(frozen=True)
class ModelShape:
    """What the FLOP accounting needs to know about a model, counted from its config.

    Attributes:
        name: the checkpoint directory's name.
        layers: decoder layers of the language model.
        layer_params: parameters of all decoder layers together.
        head_params: the output head (a matrix product per token, tied to the input embedding or not).
        embedding_params: the input embedding (a lookup: no FLOPs; listed for the total).
        vision_params: the vision tower.
        projector_params: the rest (the projector between the vision tower and the language model).
        image_tokens: language-model positions one image becomes, where the config fixes it (LLaVA-1.5: 576), else
            None (dynamic resolution: measured from the run's records instead).
        vision_positions: positions the vision tower runs per image (LLaVA-1.5: 577 with the class token), or None.
        lora_params_per_layer: LoRA parameters one decoder layer gets per unit of rank, per target module name
            (r x (in + out) / r = in + out), so any rank and targets can be priced.
    """

    name: str
    layers: int
    layer_params: int
    head_params: int
    embedding_params: int
    vision_params: int
    projector_params: int
    image_tokens: int | None
    vision_positions: int | None
    lora_params_per_layer: dict[str, int]

    @property
    def total_params(self) -> int:
        return self.layer_params + self.head_params + self.embedding_params + self.vision_params + \
            self.projector_params

    def lora_params(self, rank: int, targets: list[str], layers: int | None = None) -> int:
        """LoRA parameters of rank `rank` on `targets` in the last `layers` decoder layers (None: all)."""
        per_layer = sum(self.lora_params_per_layer.get(name, 0) for name in targets) * rank
        return per_layer * (self.layers if layers is None else min(layers, self.layers))

    def describe(self) -> dict[str, Any]:
        return {**asdict(self), "total_params": self.total_params}


def model_shape(model_dir: Path | str) -> ModelShape:
    """Count a checkpoint's parameters by part from its `config.json` alone (built on the meta device).

    Raises:
        TiveError: no config.json, or a config transformers cannot build as an image-text-to-text model.
    """
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText

    from tive.model import quiet_transformers

    quiet_transformers()
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise TiveError(f"{model_dir}: no config.json; --target-model needs a checkpoint directory or at least its "
                        "config.json")
    try:
        config = AutoConfig.from_pretrained(model_dir)
        with torch.device("meta"):
            model = AutoModelForImageTextToText.from_config(config)
    except (OSError, ValueError, KeyError) as exc:
        raise TiveError(f"{model_dir}/config.json: cannot build the model from it: {exc}") from exc
    decoder = model.get_decoder()
    layers = getattr(decoder, "layers", None)
    if layers is None:
        raise TiveError(f"{model_dir}: its language model has no `layers`; cannot count its decoder layers")
    count = {id(p): p.numel() for p in model.parameters()}
    layer_params = sum(p.numel() for p in layers.parameters())
    embedding = decoder.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    decoder_ids = {id(p) for p in decoder.parameters()}
    vision_ids: set[int] = set()
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] in _VISION_NAMES:
            vision_ids = {id(p) for p in module.parameters()}
            break
    other = sum(n for key, n in count.items() if key not in decoder_ids and key not in vision_ids and key != id(head))
    decoder_rest = sum(count[key] for key in decoder_ids) - layer_params - embedding.numel()
    per_layer: dict[str, int] = {}
    for name, module in layers[-1].named_modules():
        if isinstance(module, torch.nn.Linear):
            short = name.rsplit(".", 1)[-1]
            per_layer[short] = per_layer.get(short, 0) + module.in_features + module.out_features
    image_tokens, positions = _image_positions(config)
    return ModelShape(
        name=model_dir.name,
        layers=len(layers),
        layer_params=layer_params + decoder_rest,  # final norm and the like: negligible, counted with the layers
        head_params=head.numel(),
        embedding_params=embedding.numel() if id(embedding) != id(head) else 0,
        vision_params=sum(count[key] for key in vision_ids),
        projector_params=other,
        image_tokens=image_tokens,
        vision_positions=positions,
        lora_params_per_layer=per_layer,
    )


def _image_positions(config: Any) -> tuple[int | None, int | None]:
    """(language-model tokens per image, vision-tower positions per image) where the config fixes them (LLaVA-1.5:
    a square image of `image_size` cut into `patch_size` patches, plus the class token the default strategy drops)."""
    vision = getattr(config, "vision_config", None)
    if getattr(config, "model_type", None) != "llava" or vision is None:
        return None, None
    patches = (vision.image_size // vision.patch_size) ** 2
    keep_cls = getattr(config, "vision_feature_select_strategy", "default") == "full"
    return patches + (1 if keep_cls else 0), patches + 1


@dataclass(frozen=True)
class Tokens:
    """The run's records as the language model sees them (means over a sample of the run's records, encoded).

    Attributes:
        records: records the sample stands for.
        sampled: records encoded to measure the means.
        text_tokens: mean tokens per record that are not image tokens.
        images: mean images per record.
        image_tokens: mean image tokens per image in the reference's encoding.
    """

    records: int
    sampled: int
    text_tokens: float
    images: float
    image_tokens: float

    def per_record(self, image_tokens: float | None = None) -> float:
        """Mean language-model tokens per record, with `image_tokens` per image (default: the reference's)."""
        return self.text_tokens + self.images * (self.image_tokens if image_tokens is None else image_tokens)


def measure_tokens(encoder: Any, records: list[Any], n_records: int) -> Tokens:
    """Encode `records` (a sample) with the reference's encoder and count text and image tokens."""
    import torch

    image_ids = sorted(encoder.image_ids)
    text = images = image_tokens = 0
    used = 0
    for record in records:
        try:
            ids = encoder.encode(record).inputs["input_ids"]
        except TiveError:
            continue
        n_image = int(torch.isin(ids, torch.tensor(image_ids)).sum()) if image_ids else 0
        text += int(ids.numel()) - n_image
        image_tokens += n_image
        images += len(record.images)
        used += 1
    if not used:
        raise TiveError("estimate: none of the sampled records could be encoded; nothing to count tokens from")
    return Tokens(n_records, used, text / used, images / used, image_tokens / images if images else 0.0)


def _vision_flops(shape: ModelShape, tokens: Tokens, image_tokens: float, trained_projector: bool) -> float:
    """Per record: the frozen vision tower's forward and the projector's forward (and backward where trained)."""
    positions = shape.vision_positions if shape.vision_positions is not None else image_tokens
    projector = (6 if trained_projector else 2) * shape.projector_params * image_tokens
    return tokens.images * (2 * shape.vision_params * positions + projector)


def epoch_flops(target: ModelShape, tokens: Tokens, gradient_checkpointing: bool = True) -> dict[str, Any]:
    """One epoch of full fine-tuning (language model + projector; vision tower frozen) on every record."""
    image_tokens = target.image_tokens if target.image_tokens is not None else tokens.image_tokens
    per_token = (8 if gradient_checkpointing else 6) * (target.layer_params + target.head_params)
    per_record = per_token * tokens.per_record(image_tokens) + _vision_flops(target, tokens, image_tokens, True)
    return {"flops": per_record * tokens.records, "tokens_per_record": tokens.per_record(image_tokens),
            "image_tokens_per_image": image_tokens, "gradient_checkpointing": gradient_checkpointing}


def selection_flops(reference: ModelShape, tokens: Tokens, *, warmup_records: float, epochs: int, lora_rank: int,
                    lora_targets: list[str], last_layers: int | None, warmup_checkpointing: bool = False,
                    features_checkpointing: bool = False, feature_records: int | None = None) -> dict[str, Any]:
    """The warm-up and the features of the reference model, in the same accounting as `epoch_flops`."""
    T = tokens.per_record()
    body = reference.layer_params + reference.head_params
    vision = _vision_flops(reference, tokens, tokens.image_tokens, False)
    lora_all = reference.lora_params(lora_rank, lora_targets)
    # Warm-up: forward, input gradients through every layer, LoRA's forward and both of its gradients.
    warm_token = 4 * body + 6 * lora_all + (2 * reference.layer_params if warmup_checkpointing else 0)
    warm = (warm_token * T + vision) * warmup_records * epochs
    k = reference.layers if last_layers is None else min(last_layers, reference.layers)
    covered = reference.layer_params * k / reference.layers
    lora_k = reference.lora_params(lora_rank, lora_targets, k)
    feat_token = 2 * body + 2 * lora_all + 2 * (reference.head_params + covered) + 4 * lora_k + \
        (2 * covered if features_checkpointing else 0)
    n_features = tokens.records if feature_records is None else feature_records
    feats = (feat_token * T + vision) * n_features
    return {"warmup_flops": warm, "features_flops": feats, "flops": warm + feats, "tokens_per_record": T,
            "backward_layers": k}


def format_flops(value: float) -> str:
    """FLOPs with a decimal prefix: 5.32e+11 FLOPs, 8.59 PFLOPs, 24.4 EFLOPs."""
    for prefix, scale in (("E", 1e18), ("P", 1e15), ("T", 1e12)):
        if value >= scale:
            return f"{value / scale:.3g} {prefix}FLOPs"
    return f"{value:.3g} FLOPs"


def write_shape_config(path: Path, config: dict[str, Any]) -> Path:
    """Write a config.json (for tests and benchmarks that price a model from public numbers)."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config, indent=1))
    return path
