"""A short GPU check: the CPU-tested guarantees, on CUDA in bfloat16, with figures for the README.

    python benchmarks/gpu_check.py [--out DIR] [--records 64]

On a tiny LLaVA-1.5-shaped model (the built-in `small` preset) loaded in bfloat16 on the first GPU:
1. batched per-record gradients equal one backward pass per record (relative error of each record's gradient);
2. the sparse JL projection gives the same bytes on rerun, for two batch splits within 1e-6, and the same
   matrix as on the CPU (the hash is computed on the device; the integer accumulation makes CUDA's scatter exact);
3. feature extraction (records/s) against one training step's throughput (forward + backward + AdamW);
4. `tive features` end to end, twice with the same gradient batch (are the stored bytes equal? the model's own
   forward and backward on CUDA need not be deterministic) and once with another batch (how far apart?).
Exits with status 1 when a check of 1-3 fails; 4 is reported, not judged: its figures say where GPU features are
byte-stable and where not.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="gpu-check")
    parser.add_argument("--records", type=int, default=64)
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; nothing to check")
        return 0
    from tive.config import PrepareOptions, WarmupOptions
    from tive.demo_data import make_demo_dataset
    from tive.features.grads import BatchedGradients, record_gradient
    from tive.features.projection import make_projector
    from tive.model.data import encode_batch
    from tive.model.encode import Encoder, answer_loss_per_record, collate
    from tive.model.loading import load_with_adapter, lora_gradients_only
    from tive.rundir import load_prepared
    from tive.stages import run_prepare, run_warmup

    out = Path(args.out)
    data = make_demo_dataset(out / "data", n_records=args.records, seed=0)
    run = out / "run"
    run_prepare(data, run, PrepareOptions(images=str(data.parent / "images"), task_field="dataset"))
    run_warmup(run, WarmupOptions(model="small", device="cuda", dtype="bfloat16", epochs=1))
    model, processor = load_with_adapter(run / "base_model", run / "warmup" / "adapter", "cuda", "bfloat16")
    named = lora_gradients_only(model)
    params = [p for _, p in named]
    dataset, _ = load_prepared(run)
    encoder = Encoder(processor)
    records = [r for r in dataset.records if r.ok][:16]
    batch = encode_batch(encoder, records)
    inputs = {k: v.cuda() for k, v in batch.inputs.items()}
    failures = []

    batched = BatchedGradients(model, named)(inputs)
    pad = processor.tokenizer.pad_token_id or 0
    singles = [collate([encoder.encode(r).inputs], pad) for r in records]
    loop = torch.stack([record_gradient(model, params, {k: v.cuda() for k, v in s.items()}) for s in singles])
    relative = ((batched - loop).norm(dim=1) / loop.norm(dim=1)).max().item()
    print(f"1. batched vs loop, bfloat16 weights: max relative error {relative:.2e}")
    if relative > 2e-2:  # bfloat16 activations: the two orders of summation differ at its precision
        failures.append("batched != loop")

    grad_dim = batched.shape[1]
    gpu = make_projector("sjlt", grad_dim, 8192, seed=0, device="cuda")
    cpu = make_projector("sjlt", grad_dim, 8192, seed=0, device="cpu")
    first, second = gpu.project(batched), gpu.project(batched)
    split = torch.cat([gpu.project(batched[:5]), gpu.project(batched[5:])])
    on_cpu = cpu.project(batched.cpu())
    same_bytes = bool(torch.equal(first, second))
    split_error = ((split - first).norm(dim=1) / first.norm(dim=1)).max().item()
    cpu_error = ((on_cpu - first.cpu()).norm(dim=1) / on_cpu.norm(dim=1)).max().item()
    print(f"2. sjlt on CUDA: rerun same bytes: {same_bytes}; batch split {split_error:.1e}; vs CPU {cpu_error:.1e}")
    if not same_bytes or split_error > 1e-6 or cpu_error > 1e-5:
        failures.append("projection determinism")

    grads = BatchedGradients(model, named)
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(5):
        grads.norms_and_projection(inputs, gpu)
    torch.cuda.synchronize()
    features_rate = 5 * len(records) / (time.perf_counter() - started)
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    model.train()
    labels = inputs["labels"]
    forward = {k: v for k, v in inputs.items() if k != "labels"}
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(5):
        answer_loss_per_record(model(**forward).logits, labels).mean().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    train_rate = 5 * len(records) / (time.perf_counter() - started)
    print(f"3. features {features_rate:.1f} records/s vs a training step's {train_rate:.1f} records/s "
          f"(features / training = {features_rate / train_rate:.2f}); batch {len(records)}, grad_dim {grad_dim:,}")
    same, apart = end_to_end_features(run, "cuda", "bfloat16")
    print(f"4. tive features twice, batch 8: identical bytes: {same}; batch 8 vs 5: max relative row difference "
          f"{apart:.1e}")
    print(f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}, {datetime.date.today()}")
    if failures:
        print("FAILED: " + ", ".join(failures))
        return 1
    return 0


def end_to_end_features(run: Path, device: str, dtype: str) -> tuple[bool, float]:
    """Run `tive features` on `run` with gradient batch 8 twice and with batch 5 (float32 store); whether the two
    batch-8 stores are byte-identical, and the largest relative row difference between batch 8 and batch 5."""
    import numpy as np

    from tive.config import FeaturesOptions
    from tive.stages import run_features

    stores = []
    for batch in (8, 8, 5):
        run_features(run, FeaturesOptions(device=device, dtype=dtype, grad_batch_size=batch, feature_dtype="float32",
                                          force=True))
        stores.append(np.load(run / "features" / "features.npy"))
    first, second, other = stores
    apart = np.linalg.norm(other - first, axis=1) / np.maximum(np.linalg.norm(first, axis=1), 1e-30)
    return first.tobytes() == second.tobytes(), float(apart.max())


if __name__ == "__main__":
    sys.exit(main())
