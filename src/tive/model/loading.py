"""Loading a base model + processor, attaching LoRA, and fingerprints for provenance."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tive.errors import TiveError

# LoRA goes into the language model only: the same projection names exist in the vision tower.
LANGUAGE_MODEL_SCOPE = r".*language_model\..*"

# Small files are hashed by content, weight files by name and size (hashing many GB per run would dominate).
_CONTENT_HASH_LIMIT = 64 << 20


def resolve_device(device: str) -> str:
    """'auto' → 'cuda' when available, else 'cpu'; anything else is checked and returned."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise TiveError(f"--device {device}: CUDA is not available on this machine; use --device cpu")
    return device


def model_fingerprint(model_dir: Path) -> str:
    """A hash identifying a checkpoint directory's contents (configs by content, large weights by size)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in model_dir.rglob("*") if p.is_file()):
        rel = path.relative_to(model_dir).as_posix()
        size = path.stat().st_size
        digest.update(f"{rel}\0{size}\0".encode())
        if size <= _CONTENT_HASH_LIMIT:
            digest.update(path.read_bytes())
    return digest.hexdigest()


def load_base(model_dir: Path, device: str = "cpu") -> tuple[Any, Any]:
    """Load a Hugging Face image-text-to-text checkpoint and its processor (float32, eval mode)."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from tive.model import quiet_transformers

    quiet_transformers()
    if not (model_dir / "config.json").is_file():
        raise TiveError(
            f"{model_dir}: not a model checkpoint directory (no config.json); pass --model tiny or a directory "
            "saved with save_pretrained"
        )
    try:
        processor = AutoProcessor.from_pretrained(model_dir)
        model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32)
    except (OSError, ValueError, KeyError) as exc:
        raise TiveError(f"{model_dir}: cannot load the model or its processor: {exc}") from exc
    if getattr(processor, "chat_template", None) is None:
        raise TiveError(f"{model_dir}: the processor has no chat template; add chat_template.jinja to the checkpoint")
    model.to(device)
    model.eval()
    return model, processor


@dataclass
class LoraSettings:
    """What the LoRA adapter looks like."""

    rank: int
    alpha: float
    targets: list[str]
    modules_to_save: list[str]

    def target_regex(self) -> str:
        names = "|".join(re.escape(name) for name in self.targets)
        return rf"{LANGUAGE_MODEL_SCOPE}\.({names})$"


def add_lora(model: Any, settings: LoraSettings, seed: int) -> Any:
    """Wrap `model` with a fresh LoRA adapter on the language model's target modules (seeded init)."""
    import torch
    from peft import LoraConfig, get_peft_model

    regex = settings.target_regex()
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


def load_with_adapter(model_dir: Path, adapter_dir: Path, device: str) -> tuple[Any, Any]:
    """The reference model: base checkpoint + saved LoRA adapter, in eval mode."""
    from peft import PeftModel

    model, processor = load_base(model_dir, device)
    model = PeftModel.from_pretrained(model, adapter_dir, is_trainable=False)
    model.to(device)
    model.eval()
    return model, processor


def lora_parameters(model: Any) -> list[tuple[str, Any]]:
    """The LoRA matrices (A and B of every adapted module) in a fixed order; the gradient features' coordinates."""
    params = [(name, p) for name, p in model.named_parameters() if ".lora_A." in name or ".lora_B." in name]
    if not params:
        raise TiveError("the model has no LoRA parameters; was the adapter loaded?")
    return params


def adapter_settings_json(adapter_dir: Path) -> dict[str, Any]:
    return json.loads((adapter_dir / "adapter_config.json").read_text())
