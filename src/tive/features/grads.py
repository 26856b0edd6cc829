"""Per-record gradients of the answer loss with respect to the LoRA parameters (one backward per record)."""

from __future__ import annotations

from typing import Any

from tive.model.encode import answer_loss_per_record


def record_gradient(model: Any, params: list[Any], inputs: dict[str, Any]) -> Any:
    """The flattened gradient (float32, 1-D) of one record's mean answer-token loss w.r.t. `params`.

    `inputs` is a batch of one record (as made by `collate`), already on the model's device.
    """
    import torch

    labels = inputs["labels"]
    model_inputs = {key: value for key, value in inputs.items() if key != "labels"}
    outputs = model(**model_inputs)
    loss = answer_loss_per_record(outputs.logits, labels)[0]
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return torch.cat(
        [(g if g is not None else torch.zeros_like(p)).reshape(-1).float() for g, p in zip(grads, params)]
    )
