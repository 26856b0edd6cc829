"""Loading a base model + processor, attaching LoRA, and fingerprints for provenance."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tive.errors import TiveError

# Small files are hashed whole; a weight file above the limit by its size and `_SAMPLED_BLOCKS` blocks spread over it
# (a few MB read per file, not the 14 GB of a 7B checkpoint on every stage, yet another fine-tune of the same shape
# differs in every block).
_CONTENT_HASH_LIMIT = 64 << 20
_SAMPLED_BLOCKS = 32
_BLOCK_BYTES = 64 << 10


def resolve_device(device: str) -> str:
    """'auto' → 'cuda' when available, else 'cpu'; anything else is checked and returned."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise TiveError(f"--device {device}: CUDA is not available on this machine; use --device cpu")
    return device


def model_fingerprint(model_dir: Path) -> str:
    """A hash identifying a checkpoint directory's contents: small files by content, large weight files by size and
    blocks sampled evenly across them (see `_SAMPLED_BLOCKS`)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in model_dir.rglob("*") if p.is_file()):
        rel = path.relative_to(model_dir).as_posix()
        size = path.stat().st_size
        digest.update(f"{rel}\0{size}\0".encode())
        if size <= _CONTENT_HASH_LIMIT:
            digest.update(path.read_bytes())
            continue
        with open(path, "rb") as handle:
            for block in range(_SAMPLED_BLOCKS):
                handle.seek((size - _BLOCK_BYTES) * block // (_SAMPLED_BLOCKS - 1))
                digest.update(handle.read(_BLOCK_BYTES))
    return digest.hexdigest()


def processor_without_video(processor_class: type) -> type:
    """`processor_class` without its video processor: for image-only use where torchvision is not installed.

    Processors of video-capable models (Qwen2-VL, Qwen2.5-VL, SmolVLM, ...) load a video processor that needs
    torchvision, although tive never passes videos. The returned subclass (with the same class name, so a saved
    processor still names the real class) has every attribute of the original except `video_processor`.
    """
    attributes = [name for name in processor_class.get_attributes() if name != "video_processor"]
    full = processor_class.get_attributes()

    def get_attributes(cls: type) -> list[str]:
        return list(attributes)

    def from_args_and_dict(cls: type, args: list[Any], processor_dict: dict[str, Any], **kwargs: Any) -> Any:
        # The original __init__ takes the video processor positionally: give it None in its place.
        given = dict(zip(attributes, args))
        full_args = [given.get(name) for name in full]
        processor_dict = {key: value for key, value in processor_dict.items() if key != "video_processor"}
        return processor_class.from_args_and_dict.__func__(cls, full_args, processor_dict, **kwargs)

    return type(
        processor_class.__name__,
        (processor_class,),
        {
            "get_attributes": classmethod(get_attributes),
            "from_args_and_dict": classmethod(from_args_and_dict),
            "video_processor": _NoVideoProcessor(),
            "__module__": processor_class.__module__,
            "__doc__": f"{processor_class.__name__} without its video processor (images and text only).",
        },
    )


class _NoVideoProcessor:
    """Stands in for the video processor of `processor_without_video`: answers for defaults, refuses videos.

    Some processors read video defaults even for image-only input (SmolVLM's `apply_chat_template` reads
    `num_frames` and `fps`); None lets them fall back to no video sampling.
    """

    num_frames = None
    fps = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TiveError("this processor was loaded without its video processor (torchvision is not installed)")


def load_processor(model_dir: Path) -> Any:
    """The checkpoint's processor through `AutoProcessor`; without torchvision, its image-only variant.

    Without torchvision, transformers falls back to the PIL backend for image processors, but video processors
    have no such backend: when torchvision is missing, a processor that has a video processor and does not load is
    loaded again without it (`processor_without_video`). Anything else is an error naming the checkpoint.
    """
    from transformers import AutoProcessor
    from transformers.utils import is_torchvision_available

    try:
        return AutoProcessor.from_pretrained(model_dir)
    except (ImportError, OSError, ValueError, KeyError, TypeError) as exc:
        error = exc
    processor_class = None if is_torchvision_available() else _processor_class(model_dir)
    if processor_class is None or "video_processor" not in processor_class.get_attributes():
        raise TiveError(f"{model_dir}: cannot load the processor: {str(error).strip()}") from error
    try:
        return processor_without_video(processor_class).from_pretrained(model_dir)
    except (ImportError, OSError, ValueError, KeyError, TypeError) as exc:
        raise TiveError(
            f"{model_dir}: cannot load the processor ({str(error).strip()}), nor without its video processor "
            f"(torchvision is not installed): {exc}"
        ) from exc


def _processor_class(model_dir: Path) -> type | None:
    """The processor class a checkpoint names (processor_config.json or preprocessor_config.json), else its model's."""
    import transformers
    from transformers import AutoConfig
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING

    for name in ("processor_config.json", "preprocessor_config.json"):
        path = model_dir / name
        if path.is_file():
            class_name = json.loads(path.read_text()).get("processor_class")
            if class_name and hasattr(transformers, class_name):
                return getattr(transformers, class_name)
    try:
        return PROCESSOR_MAPPING[type(AutoConfig.from_pretrained(model_dir))]
    except (KeyError, OSError, ValueError):
        return None


DTYPES = ("float32", "bfloat16", "float16")


def load_base(model_dir: Path, device: str = "cpu", dtype: str = "float32") -> tuple[Any, Any]:
    """Load a Hugging Face image-text-to-text checkpoint and its processor (weights in `dtype`, eval mode)."""
    import torch
    from transformers import AutoModelForImageTextToText

    from tive.model import quiet_transformers

    quiet_transformers()
    if not (model_dir / "config.json").is_file():
        raise TiveError(
            f"{model_dir}: not a model checkpoint directory (no config.json); pass --model tiny or a directory "
            "saved with save_pretrained"
        )
    if dtype not in DTYPES:
        raise TiveError(f"--dtype {dtype}: choose one of {', '.join(DTYPES)}")
    processor = load_processor(model_dir)
    try:
        model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=getattr(torch, dtype))
    except (OSError, ValueError, KeyError) as exc:
        raise TiveError(f"{model_dir}: cannot load the model: {exc}") from exc
    if getattr(processor, "chat_template", None) is None:
        raise TiveError(f"{model_dir}: the processor has no chat template; add chat_template.jinja to the checkpoint")
    model.to(device)
    model.eval()
    return model, processor


def language_model_prefix(model: Any) -> str:
    """The module name of the model's language model (its decoder stack), e.g. `model.language_model`.

    Found from the model itself (`get_decoder()`, which every transformers image-text-to-text model implements:
    `model.language_model` for LLaVA, LLaVA-NeXT, Qwen2-VL and Qwen2.5-VL, `model.text_model` for Idefics3 and
    SmolVLM), so LoRA never reaches the vision tower or the projector, whatever they are called.
    """
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    names = {id(module): name for name, module in model.named_modules()}
    name = names.get(id(decoder)) if decoder is not None else None
    if not name:  # no decoder, or the model is its own decoder (a text-only model): look for a known name
        for candidate in ("model.language_model", "language_model", "model.text_model", "text_model"):
            if any(n == candidate for n in names.values()):
                return candidate
        raise TiveError(
            f"{type(model).__name__}: cannot find its language model (get_decoder() gives nothing usable); "
            "tive adapts only the language model of an image-text-to-text model"
        )
    return name


@dataclass
class LoraSettings:
    """What the LoRA adapter looks like."""

    rank: int
    alpha: float
    targets: list[str]
    modules_to_save: list[str]

    def target_regex(self, scope: str) -> str:
        """A peft `target_modules` regex: the target names inside the module `scope` (the language model)."""
        names = "|".join(re.escape(name) for name in self.targets)
        return rf"{re.escape(scope)}\..*\.({names})$"


def add_lora(model: Any, settings: LoraSettings, seed: int) -> Any:
    """Wrap `model` with a fresh LoRA adapter on the language model's target modules (seeded init)."""
    import torch
    from peft import LoraConfig, get_peft_model

    regex = settings.target_regex(language_model_prefix(model))
    if not any(re.fullmatch(regex, name) for name, _ in model.named_modules()):
        raise TiveError(
            f"--lora-targets {','.join(settings.targets)}: no such module in the language model; "
            "name modules as they appear in model.named_modules(), e.g. q_proj,v_proj"
        )
    config = LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=0.0,
        target_modules=regex,
        modules_to_save=settings.modules_to_save or None,
        bias="none",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return get_peft_model(model, config)


def enable_gradient_checkpointing(model: Any) -> None:
    """Recompute activations in the backward pass instead of keeping them (less memory, about a third more time).

    Non-reentrant checkpointing. The backward pass recomputes each layer's forward, so the LoRA hooks of
    `BatchedGradients` fire twice; the recomputed inputs are the same numbers, and the tests check that batched
    gradients under checkpointing still equal the one-record-at-a-time gradients.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not getattr(base, "supports_gradient_checkpointing", False):
        raise TiveError(
            f"{type(base).__name__} does not support gradient checkpointing; leave out --gradient-checkpointing"
        )
    if hasattr(base, "activation_checkpointing_enable"):  # transformers >= 5.x; the old name is deprecated
        base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if hasattr(base, "config"):
        base.config.use_cache = False


def checkpoint_in_eval(model: Any) -> None:
    """Let gradient checkpointing work on a model in eval mode (the features stage's).

    transformers checkpoints a layer only while that layer is in training mode. Only the checkpointed layers
    themselves are flagged as training, not their submodules, so dropout stays off and results do not change.
    """
    from transformers.modeling_layers import GradientCheckpointingLayer

    for module in model.modules():
        if isinstance(module, GradientCheckpointingLayer) and module.gradient_checkpointing:
            module.training = True


def load_with_adapter(model_dir: Path, adapter_dir: Path, device: str, dtype: str = "float32") -> tuple[Any, Any]:
    """The reference model: base checkpoint (weights in `dtype`) + saved LoRA adapter, in eval mode.

    The LoRA matrices stay float32 whatever `dtype` (peft's default), so gradients with respect to them are too.
    """
    from peft import PeftModel

    model, processor = load_base(model_dir, device, dtype)
    model = PeftModel.from_pretrained(model, adapter_dir, is_trainable=False)
    model.to(device)
    model.eval()
    return model, processor


ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


def check_reference_adapter(adapter_dir: Path, model_dir: Path) -> dict[str, Any]:
    """Check that `adapter_dir` holds a LoRA adapter made for the checkpoint in `model_dir`; returns its config.

    Checked without loading any weights: both adapter files exist; the adapter is LoRA; the base model it names
    (`base_model_name_or_path`) is `model_dir` (same path or same final name: a hub id like
    `llava-hf/llava-1.5-7b-hf` matches a local copy named `llava-1.5-7b-hf`); and every tensor of the adapter
    fits the model built from `model_dir`'s config (on the meta device): its module exists and the shapes agree.
    """
    import torch
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForImageTextToText

    where = f"--reference-adapter {adapter_dir}"
    missing = [name for name in ADAPTER_FILES if not (adapter_dir / name).is_file()]
    if missing:
        raise TiveError(f"{where}: missing {', '.join(missing)}; pass a directory saved by peft's save_pretrained")
    try:
        config = json.loads((adapter_dir / "adapter_config.json").read_text())
    except json.JSONDecodeError as exc:
        raise TiveError(f"{where}: adapter_config.json is not valid JSON: {exc}") from exc
    if config.get("peft_type") != "LORA":
        raise TiveError(f"{where}: a {config.get('peft_type')} adapter; tive's gradient features need a LoRA adapter")
    base = config.get("base_model_name_or_path")
    if base and Path(base).name != model_dir.name and Path(base).expanduser().resolve() != model_dir.resolve():
        raise TiveError(
            f"{where}: made for base model {base!r}, not --model {model_dir}; pass the adapter's own base model "
            "(if it is that model renamed, set base_model_name_or_path in adapter_config.json)"
        )
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(AutoConfig.from_pretrained(model_dir))
    parameters = dict(model.named_parameters(remove_duplicate=False))
    scope = language_model_prefix(model)
    with safe_open(adapter_dir / "adapter_model.safetensors", framework="pt") as weights:
        keys = list(weights.keys())
        if not any(".lora_" in key for key in keys):
            raise TiveError(f"{where}: adapter_model.safetensors holds no LoRA matrix")
        for key in keys:
            shape = tuple(weights.get_slice(key).get_shape())
            name = key.removeprefix("base_model.model.")
            problem = _adapter_tensor_problem(name, shape, parameters)
            if problem:
                raise TiveError(f"{where}: tensor {key} does not fit --model {model_dir}: {problem}")
            if ".lora_" in name and not name.startswith(scope + "."):
                raise TiveError(
                    f"{where}: tensor {key} adapts {name.split('.lora_')[0]}, outside the language model ({scope}); "
                    "tive's gradient features are taken in the language model only: pass an adapter whose LoRA "
                    "targets are inside it"
                )
    return config


def _adapter_tensor_problem(key: str, shape: tuple[int, ...], parameters: dict[str, Any]) -> str | None:
    """Why an adapter tensor does not fit the model's parameters, or None when it does."""
    match = re.fullmatch(r"(.+)\.lora_(A|B)\.weight", key)
    if match:
        module, kind = match.groups()
        weight = parameters.get(module + ".weight")
        if weight is None or weight.ndim != 2:
            return f"the model has no linear layer {module}"
        out_features, in_features = weight.shape
        if kind == "A" and shape[1:] != (in_features,):
            return f"lora_A is {shape}, the layer takes {in_features} inputs"
        if kind == "B" and shape[:1] != (out_features,):
            return f"lora_B is {shape}, the layer gives {out_features} outputs"
        return None
    if ".lora_" in key:  # other LoRA variants' tensors (embeddings, DoRA magnitudes): the module must exist
        module = key.split(".lora_")[0]
        return None if any(name.startswith(module + ".") for name in parameters) else f"no module {module}"
    weight = parameters.get(key)  # a module saved whole (modules_to_save)
    if weight is None:
        return "the model has no such parameter"
    if tuple(weight.shape) != shape:
        return f"shape {shape}, the model's is {tuple(weight.shape)}"
    return None


def lora_parameters(model: Any) -> list[tuple[str, Any]]:
    """The LoRA matrices (A and B of every adapted module) in a fixed order; the gradient features' coordinates."""
    params = [(name, p) for name, p in model.named_parameters() if ".lora_A." in name or ".lora_B." in name]
    if not params:
        raise TiveError("the model has no LoRA parameters; was the adapter loaded?")
    return params


def lora_gradients_only(model: Any, last_layers: int | None = None) -> list[tuple[str, Any]]:
    """Freeze every parameter except the LoRA matrices; returns them as `lora_parameters` does.

    Gradient features are taken with respect to the LoRA matrices only, so nothing else needs a gradient. With
    `last_layers` = K (`--layers last:K`), only the LoRA matrices of the language model's last K decoder layers
    require a gradient and are returned: nothing before those layers needs one, so autograd's backward pass stops
    at the first of them (the cheap features of `tive features --layers`).
    """
    for param in model.parameters():
        param.requires_grad_(False)
    named = lora_parameters(model)
    if last_layers is not None:
        named = lora_in_last_layers(model, named, last_layers)
    for _, param in named:
        param.requires_grad_(True)
    return named


def parse_layers(spec: str) -> int | None:
    """`--layers`: "all" → None (every LoRA matrix); "last:K" → K (the last K decoder layers' LoRA matrices)."""
    text = str(spec).strip().lower()
    if text == "all":
        return None
    head, _, count = text.partition(":")
    if head == "last" and count.isdigit() and int(count) >= 1:
        return int(count)
    raise TiveError(f"--layers {spec}: write all, or last:K with K a whole number of decoder layers (e.g. last:1)")


def decoder_layer_names(model: Any) -> list[str]:
    """The module names of the language model's decoder layers, in order (`<language model>.layers.<i>`)."""
    prefix = language_model_prefix(model)
    pattern = re.compile(rf"{re.escape(prefix)}\.layers\.(\d+)")
    found = {int(m.group(1)): name for name, _ in model.named_modules() if (m := pattern.fullmatch(name))}
    if not found:
        raise TiveError(f"{type(model).__name__}: its language model ({prefix}) has no `layers`; --layers last:K "
                        "needs a decoder stack; use --layers all")
    return [found[i] for i in sorted(found)]


def lora_in_last_layers(model: Any, named: list[tuple[str, Any]], k: int) -> list[tuple[str, Any]]:
    """The LoRA matrices of `named` that sit in the language model's last `k` decoder layers, in the same order.

    Raises:
        TiveError: `k` exceeds the number of decoder layers, or those layers hold no LoRA matrix.
    """
    layers = decoder_layer_names(model)
    if not 1 <= k <= len(layers):
        raise TiveError(f"--layers last:{k}: the model's language model has {len(layers)} decoder layers; choose K "
                        f"from 1 to {len(layers)}, or --layers all")
    kept_layers = tuple(name + "." for name in layers[-k:])
    kept = [(name, p) for name, p in named if name.startswith(kept_layers)]
    if not kept:
        raise TiveError(f"--layers last:{k}: the adapter has no LoRA matrix in the last {k} decoder layers "
                        f"({layers[-k]} onwards); use more layers or --layers all")
    return kept


def adapter_settings_json(adapter_dir: Path) -> dict[str, Any]:
    return json.loads((adapter_dir / "adapter_config.json").read_text())
