"""Feature-extraction benchmark: throughput, memory and accuracy of each gradient/projection path, in one run.

    python benchmarks/features.py [--records 96] [--model small] [--proj-dim 8192] [--out DIR]

On one generated dataset and one reference model (the `small` preset by default: a LoRA gradient of about a
million numbers), it measures in separate child processes (so each peak memory is its own):

- reference: one backward pass per record (`--grad-mode loop`) + dense Rademacher projection;
- batched: one backward pass per batch + dense, and + each fast projector;
- one training epoch over the same records (forward + backward + AdamW step, same batch size): the physical floor.

and prints records/s, the ratio to the reference, peak RSS, the ratio of extraction time to the epoch, and how
well each path reproduces the reference: relative error of the gradient norms and the Spearman correlation of
the instance values (mean in-task cosine) with the reference's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CONFIGS = {
    "reference": ("loop", "dense"),
    "batched+dense": ("batched", "dense"),
    "batched+sjlt": ("batched", "sjlt"),
}


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ranks_a, ranks_b = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ranks_a, ranks_b)[0, 1])


def prepare_run(out: Path, records: int, model: str) -> Path:
    """Demo data + prepare + warm-up: a run directory ready for feature extraction."""
    from tive.config import PrepareOptions, WarmupOptions
    from tive.demo_data import make_demo_dataset
    from tive.stages import run_prepare, run_warmup

    data = make_demo_dataset(out / "data", n_records=records, seed=0)
    run_dir = out / "run"
    run_prepare(data, run_dir, PrepareOptions(images=str(out / "data" / "images"), task_field="dataset"))
    run_warmup(run_dir, WarmupOptions(model=model, seed=0))
    return run_dir


def worker(run_dir: Path, config: str, proj_dim: int, batch_size: int, result_path: Path) -> None:
    """Child process: time one configuration over all ok records (model loading and encoding excluded)."""
    import torch

    from tive.features.grads import BatchedGradients, record_gradient
    from tive.features.projection import make_projector
    from tive.model.encode import answer_loss_per_record, collate, encode_record
    from tive.model.loading import load_with_adapter, lora_gradients_only
    from tive.rundir import load_prepared

    dataset, _ = load_prepared(run_dir)
    records = [r for r in dataset.records if r.ok]
    model, processor = load_with_adapter(run_dir / "base_model", run_dir / "warmup" / "adapter", "cpu")
    named = lora_gradients_only(model)
    params = [p for _, p in named]
    pad = processor.tokenizer.pad_token_id
    encoded = [encode_record(processor, r) for r in records]
    grad_dim = sum(p.numel() for p in params)
    batches = [list(range(i, min(i + batch_size, len(encoded)))) for i in range(0, len(encoded), batch_size)]
    result: dict = {"config": config, "records": len(records), "grad_dim": grad_dim}

    if config == "epoch":
        model.train()
        optimizer = torch.optim.AdamW(params, lr=1e-4)
        started = time.perf_counter()
        for members in batches:
            batch = collate([encoded[i] for i in members], pad)
            labels = batch.pop("labels")
            loss = answer_loss_per_record(model(**batch).logits, labels).mean()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        result["seconds"] = time.perf_counter() - started
    else:
        grad_mode, projector_name = CONFIGS[config]
        projector = make_projector(projector_name, grad_dim, proj_dim, seed=0)
        batched = BatchedGradients(model, named)
        features, norms = [], []
        started = time.perf_counter()
        for members in batches:
            if grad_mode == "batched":
                grads = batched(collate([encoded[i] for i in members], pad))
            else:
                grads = torch.stack([record_gradient(model, params, collate([encoded[i]], pad)) for i in members])
            with torch.no_grad():
                norms.append(grads.double().norm(dim=1))
                features.append(projector.project(grads))
        result["seconds"] = time.perf_counter() - started
        np.save(result_path.with_suffix(".x.npy"), torch.cat(features).numpy())
        np.save(result_path.with_suffix(".norm.npy"), torch.cat(norms).numpy())
        result["tasks"] = [r.task for r in records]
    result_path.write_text(json.dumps(result))


def run_child(args: argparse.Namespace, run_dir: Path, config: str, result_path: Path) -> dict:
    command = [sys.executable, __file__, "--worker", config, "--run-dir", str(run_dir),
               "--proj-dim", str(args.proj_dim), "--batch-size", str(args.batch_size), "--result", str(result_path)]
    process = subprocess.Popen(command)
    _, status, usage = os.wait4(process.pid, 0)
    if status != 0:
        raise SystemExit(f"worker {config} failed with status {status}")
    result = json.loads(result_path.read_text())
    result["peak_rss_mb"] = usage.ru_maxrss / 1024  # Linux reports KiB
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=96)
    parser.add_argument("--model", default="small", help="tiny, small or a checkpoint directory")
    parser.add_argument("--proj-dim", type=int, default=8192)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--out", help="work directory (default: a temporary one)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--run-dir", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(Path(args.run_dir), args.worker, args.proj_dim, args.batch_size, Path(args.result))
        return

    from tive.scoring import instance_values

    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="tive-bench-features-"))
    run_dir = prepare_run(out, args.records, args.model)
    results = {name: run_child(args, run_dir, name, out / f"{name}.json") for name in [*CONFIGS, "epoch"]}
    ref = results["reference"]
    ref_x, ref_n = np.load(out / "reference.x.npy"), np.load(out / "reference.norm.npy")
    ref_values = instance_values(ref_x, ref["tasks"])
    epoch = results["epoch"]["seconds"]
    print(f"\n{ref['records']} records, LoRA gradient of {ref['grad_dim']:,} numbers -> {args.proj_dim} dims, "
          f"model {args.model}, batch {args.batch_size}, {os.cpu_count()} CPU cores, torch threads default")
    header = f"{'path':<15} {'rec/s':>8} {'x ref':>7} {'peak MB':>8} {'x epoch':>8} {'norm err':>9} {'spearman':>9}"
    print(header)
    print("-" * len(header))
    for name in CONFIGS:
        r = results[name]
        x, n = np.load(out / f"{name}.x.npy"), np.load(out / f"{name}.norm.npy")
        norm_err = float(np.max(np.abs(n - ref_n) / ref_n))
        rho = spearman(instance_values(x, r["tasks"]), ref_values)
        print(f"{name:<15} {r['records'] / r['seconds']:>8.1f} {ref['seconds'] / r['seconds']:>7.1f} "
              f"{r['peak_rss_mb']:>8.0f} {r['seconds'] / epoch:>8.2f} {norm_err:>9.1e} {rho:>9.3f}")
    e = results["epoch"]
    print(f"{'training epoch':<15} {e['records'] / e['seconds']:>8.1f} {ref['seconds'] / e['seconds']:>7.1f} "
          f"{e['peak_rss_mb']:>8.0f} {1.0:>8.2f}")
    print(f"(work directory: {out})")


if __name__ == "__main__":
    main()
