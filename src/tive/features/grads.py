"""Per-record gradients of the answer loss with respect to the LoRA parameters.

Two ways to the same numbers:

- `loop` (the reference): one forward and one backward pass per record, `torch.autograd.grad` of its loss.
- `batched` (default): one forward and one backward pass per batch. For a LoRA matrix W used as z = W x at every
  token, a record's gradient is the sum over its tokens of outer products dL/dz_t ⊗ x_t. Hooks on the LoRA A and
  B linears capture each token's input x_t and output-gradient dL/dz_t; the backward pass runs on the sum of the
  records' losses (each the mean over its own answer tokens), so each record's slice of dL/dz is exactly its own
  loss's. Padding positions get no gradient (their labels are masked and nothing attends to them), and image
  tokens are ordinary positions of the language model, so the result is exact under padding, variable lengths
  and images.
"""

from __future__ import annotations

from typing import Any

from tive.model.encode import answer_loss_per_record

GRAD_MODES = ("batched", "loop")


def _forward_losses(model: Any, inputs: dict[str, Any]) -> Any:
    model_inputs = {key: value for key, value in inputs.items() if key != "labels"}
    return answer_loss_per_record(model(**model_inputs).logits, inputs["labels"])


def record_gradient(model: Any, params: list[Any], inputs: dict[str, Any]) -> Any:
    """The flattened gradient (float32, 1-D) of one record's mean answer-token loss w.r.t. `params`.

    `inputs` is a batch of one record (as made by `collate`), already on the model's device.
    """
    import torch

    loss = _forward_losses(model, inputs)[0]
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return torch.cat(
        [(g if g is not None else torch.zeros_like(p)).reshape(-1).float() for g, p in zip(grads, params)]
    )


class BatchedGradients:
    """Exact per-record LoRA gradients for a whole batch from one backward pass, via module hooks.

    Args:
        model: a peft model whose LoRA parameters are the only ones requiring gradients.
        named_params: the LoRA matrices `(name, parameter)` in the order of the flattened gradient (the same order
            as `lora_parameters`), each the `weight` of a bias-free `nn.Linear` (peft's lora_A / lora_B).
    """

    def __init__(self, model: Any, named_params: list[tuple[str, Any]]) -> None:
        modules = dict(model.named_modules())
        self.model = model
        self.linears = []
        for name, param in named_params:
            owner = modules.get(name.removesuffix(".weight"))
            if owner is None or owner.weight is not param or getattr(owner, "bias", None) is not None:
                raise ValueError(f"{name}: not the weight of a bias-free linear layer; use --grad-mode loop")
            self.linears.append(owner)
        self.inputs: dict[Any, Any] = {}
        self.output_grads: dict[Any, Any] = {}
        self.handles: list[Any] = []

    def _hook(self, module: Any, args: tuple[Any, ...], output: Any) -> None:
        self.inputs[module] = args[0].detach()

        def keep(grad: Any) -> None:
            self.output_grads[module] = grad.detach()

        output.register_hook(keep)

    def _parts(self, inputs: dict[str, Any]) -> Any:
        """One forward and one backward pass; then, per LoRA matrix in gradient order, the batch's per-record
        gradients of that matrix: (batch, its number of weights) float32. The hooks are removed and the captured
        tensors freed when the iteration ends."""
        import torch

        self.handles = [linear.register_forward_hook(self._hook) for linear in self.linears]
        try:
            losses = _forward_losses(self.model, inputs)
            losses.sum().backward(inputs=[linear.weight for linear in self.linears])
            for linear in self.linears:
                x = self.inputs.pop(linear).float()
                g = self.output_grads.pop(linear).float()
                # Per record: sum over tokens of (output-gradient ⊗ input) = (out, in), like W.
                yield torch.einsum("bto,bti->boi", g, x).reshape(x.shape[0], -1)
        finally:
            for handle in self.handles:
                handle.remove()
            self.inputs.clear()
            self.output_grads.clear()
            for linear in self.linears:
                linear.weight.grad = None

    def __call__(self, inputs: dict[str, Any]) -> Any:
        """Per-record gradients of the batch in `inputs`: a (batch, grad_dim) float32 tensor."""
        import torch

        return torch.cat(list(self._parts(inputs)), dim=1)

    def norms_and_projection(self, inputs: dict[str, Any], projector: Any) -> tuple[Any, Any]:
        """The batch's per-record gradient norms (float64) and projections (float32), one LoRA matrix at a time.

        The whole (batch, grad_dim) gradient never exists: each matrix's slice is projected into the output
        (`projector.project_slice`) and added to the squared norms, then dropped, so the memory beyond the forward
        pass is one matrix's gradients — at 7B, 134M numbers a record become 4096 x 128 at a time.
        """
        import torch

        squared, out, start = None, None, 0
        for part in self._parts(inputs):
            if out is None:
                squared = torch.zeros(part.shape[0], dtype=torch.float64, device=part.device)
                out = torch.zeros(part.shape[0], projector.proj_dim, dtype=torch.float64, device=part.device)
            squared += part.double().square().sum(dim=1)
            projector.project_slice(part, start, out)
            start += part.shape[1]
        return squared.sqrt(), out.float()
