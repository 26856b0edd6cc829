"""Projection benchmark: cost, memory and accuracy of each random projector, in one run.

    python benchmarks/projection.py [--sizes 1M,128M] [--proj-dim 8192] [--batch 2] [--repeats 3]
                                    [--nonzeros 1,2,4] [--threads N] [--accuracy] [--accuracy-only]

Cost table (one child process per size and projector, so that each peak memory is its own): for a seeded
(batch, grad_dim) float32 gradient, the time of one `torch.sum` pass over it (the floor: reading it once), each
projector's first call (construction + first `project`) and warm call (best of `--repeats`, dense: one; each after a
fresh sum pass so that both see the same machine), the ratio warm / sum, the peak memory beyond the input (VmHWM after
resetting it with /proc/self/clear_refs, minus the RSS with the input allocated) and the largest relative error
of the projected norms. `dense` is only run where proj_dim x grad_dim <= 2^34; beyond, its estimate_seconds()
is printed instead. Sizes: 1M = 2^20 numbers, 128M = 2^27 = 134,217,728 (LLaVA-1.5-7B, LoRA rank 128 on the
attention projections).

Accuracy (`--accuracy`): synthetic LoRA-like per-record gradients — matrices alternately A (128 x d) and
B (d x 128), each a sum of 16 token outer products u v^T with a per-task part (whose weight varies by record, so
that instance values spread) and heterogeneous per-matrix scales (log-normal) — for 64 records in 4 tasks, at
2^20 numbers (16 matrices, d = 512; dense included) and 2^24 (32 matrices, d = 4096); and "spiky" at 2^24 (0.01%
of the coordinates 300x larger: ~90% of the squared norm in 1,677 numbers). For each projector (sjlt with each
`--nonzeros`, dense where affordable, and the LoGra-style Kronecker projection P1 G P2^T computed from the
factors, with the same total dimension), over 3 seeds: relative error of the norms, absolute error of the
pairwise cosines, and the Spearman correlation of the instance values (mean in-task cosine, as TIVE scores
records) with the exact ones.

Timings on a shared machine are noisy: compare the ratio column, and rerun when the sum pass looks slow.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

DENSE_LIMIT = 1 << 34


def parse_size(text: str) -> int:
    text = text.strip().upper()
    for suffix, power in (("K", 10), ("M", 20), ("G", 30)):
        if text.endswith(suffix):
            return int(text[:-1]) << power
    return int(text)


def status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def timed(fn: Any) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def worker(config: dict[str, Any]) -> dict[str, Any]:
    """Child process: one projector at one size."""
    import torch

    if config["threads"]:
        torch.set_num_threads(config["threads"])
    from tive.features.projection import make_projector

    grad_dim, batch, proj_dim = config["grad_dim"], config["batch"], config["proj_dim"]
    generator = torch.Generator().manual_seed(0)
    grads = torch.randn(batch, grad_dim, generator=generator)
    # Heterogeneous magnitudes, as across LoRA matrices: one log-normal scale per 2^20 numbers.
    scales = torch.exp(torch.randn(batch, (grad_dim + (1 << 20) - 1) >> 20, generator=generator))
    for i in range(scales.shape[1]):
        grads[:, i << 20 : (i + 1) << 20] *= scales[:, i : i + 1]
    exact = torch.linalg.vector_norm(grads, dim=1, dtype=torch.float64)
    sums = [timed(lambda: grads.sum()) for _ in range(2)]
    options = {"nonzeros": config["nonzeros"]} if config["projector"] == "sjlt" else {}
    result: dict[str, Any] = {**config, "threads_used": torch.get_num_threads()}
    if config["projector"] == "dense" and proj_dim * grad_dim > DENSE_LIMIT:
        projector = make_projector("dense", grad_dim, proj_dim, 0, "cpu", cache_bytes=0)
        result.update(sum_s=min(sums), estimate_s=projector.estimate_seconds(batch))
        return result
    baseline = status_kb("VmRSS")
    peak_reset = reset_peak()
    t0 = time.perf_counter()
    projector = make_projector(config["projector"], grad_dim, proj_dim, 0, "cpu", **options)
    construct = time.perf_counter() - t0
    projected = projector.project(grads)
    first = time.perf_counter() - t0
    warm = []
    for _ in range(config["repeats"] if config["projector"] != "dense" else 1):  # dense: minutes per call
        sums.append(timed(lambda: grads.sum()))
        warm.append(timed(lambda: projector.project(grads)))
    peak = status_kb("VmHWM") - baseline if peak_reset else float("nan")
    norm_error = (projected.double().norm(dim=1) / exact - 1).abs().max().item()
    again = projector.project(grads)
    result.update(
        sum_s=min(sums), construct_s=construct, first_s=first, warm_s=min(warm), warm_all=warm,
        peak_extra_mb=peak / 1024, norm_error=norm_error, rerun_identical=bool(torch.equal(projected, again)),
        describe=projector.describe(),
    )
    return result


def run_child(config: dict[str, Any]) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    done = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(config)], capture_output=True, text=True, env=env, check=False
    )
    if done.returncode != 0:
        return {**config, "error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def cost_table(args: argparse.Namespace) -> None:
    print(f"cost: batch {args.batch}, proj_dim {args.proj_dim}, CPU threads {args.threads or 'default'}; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    header = (f"{'grad_dim':>12} {'projector':>10} {'sum s':>7} {'first s':>8} {'warm s':>7} {'warm/sum':>8} "
              f"{'peak+ MB':>9} {'norm err':>9}  rerun")
    print(header)
    print("-" * len(header))
    for size in args.sizes:
        configs = [("sjlt", s) for s in args.nonzeros] + ([("dense", 0)] if "dense" in args.projectors else [])
        for name, nonzeros in configs:
            config = {"grad_dim": size, "batch": args.batch, "proj_dim": args.proj_dim, "projector": name,
                      "nonzeros": nonzeros, "repeats": args.repeats, "threads": args.threads}
            r = run_child(config)
            label = f"sjlt/{nonzeros}" if name == "sjlt" else name
            if "error" in r:
                print(f"{size:>12,} {label:>10}  error: {r['error']}")
            elif "estimate_s" in r:
                print(f"{size:>12,} {label:>10} {r['sum_s']:7.3f} {'':>8} {r['estimate_s']:7.0f} "
                      f"{r['estimate_s'] / r['sum_s']:8.0f}  (estimate_seconds; not run)")
            else:
                print(f"{size:>12,} {label:>10} {r['sum_s']:7.3f} {r['first_s']:8.2f} {r['warm_s']:7.3f} "
                      f"{r['warm_s'] / r['sum_s']:8.1f} {r['peak_extra_mb']:9.0f} {r['norm_error']:9.2e}  "
                      f"{'same bytes' if r['rerun_identical'] else 'DIFFERENT'}")
            sys.stdout.flush()


# ------------------------------------------------------------------------------------------------------ accuracy
def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ranks_a, ranks_b = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ranks_a, ranks_b)[0, 1])


def lora_factors(records: int, tasks: int, shapes: list[tuple[int, int]], tokens: int, seed: int,
                 spiky: bool) -> tuple[list[Any], list[Any], Any]:
    """Per matrix: U (records, rows, tokens), V (records, cols, tokens), so that G_m = U V^T; and the spike mask."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    task = torch.arange(records) % tasks
    share = torch.linspace(0.2, 1.5, records)[torch.randperm(records, generator=gen)]
    us, vs = [], []
    for rows, cols in shapes:
        scale = math.exp(float(torch.randn(1, generator=gen)))  # per-matrix magnitude (log-normal)
        shared_u = torch.randn(tasks, rows, tokens, generator=gen)
        shared_v = torch.randn(tasks, cols, tokens, generator=gen)
        own = torch.exp(0.3 * torch.randn(records, 1, 1, generator=gen))  # per-record magnitude
        typical = share[:, None, None]  # how much of the task's common direction a record has
        u = (typical * shared_u[task] + torch.randn(records, rows, tokens, generator=gen)) * own * scale / tokens**0.5
        v = 0.7 * shared_v[task] + torch.randn(records, cols, tokens, generator=gen)
        us.append(u)
        vs.append(v)
    grad_dim = sum(r * c for r, c in shapes)
    spikes = None
    if spiky:
        spikes = torch.randperm(grad_dim, generator=gen)[: grad_dim // 10000]
    return us, vs, spikes


def materialize(us: list[Any], vs: list[Any], spikes: Any) -> Any:
    import torch

    grads = torch.cat([torch.bmm(u, v.transpose(1, 2)).flatten(1) for u, v in zip(us, vs)], dim=1)
    if spikes is not None:
        grads[:, spikes] *= 300.0
    return grads


def gram(x: Any) -> Any:
    import torch

    out = torch.zeros(x.shape[0], x.shape[0], dtype=torch.float64)
    for start in range(0, x.shape[1], 1 << 20):
        part = x[:, start : start + (1 << 20)].double()
        out += part @ part.T
    return out


def scores(g: Any, tasks: int) -> tuple[Any, Any, np.ndarray]:
    """Norms, cosine matrix and instance values (mean in-task cosine to the other records of the task)."""
    import torch

    norms = g.diagonal().sqrt()
    cos = g / norms[:, None] / norms[None, :]
    task = torch.arange(g.shape[0]) % tasks
    same = (task[:, None] == task[None, :]) & ~torch.eye(g.shape[0], dtype=torch.bool)
    values = (cos * same).sum(1) / same.sum(1)
    return norms, cos, values.numpy()


def kronecker(us: list[Any], vs: list[Any], k1: int, k2: int, seed: int) -> Any:
    """LoGra-style: per matrix, (P1 U)(P2 V)^T with Rademacher P1 (k1 x rows), P2 (k2 x cols); concatenated."""
    import torch

    gen = torch.Generator().manual_seed(10_000 + seed)
    feats = []
    for u, v in zip(us, vs):
        p1 = (torch.randint(0, 2, (k1, u.shape[1]), generator=gen) * 2 - 1).float() / k1**0.5
        p2 = (torch.randint(0, 2, (k2, v.shape[1]), generator=gen) * 2 - 1).float() / k2**0.5
        feats.append(torch.bmm(p1 @ u, (p2 @ v).transpose(1, 2)).flatten(1))
    return torch.cat(feats, dim=1)


def accuracy(args: argparse.Namespace) -> None:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from tive.features.projection import make_projector

    records, tasks, tokens, k = 64, 4, 16, args.proj_dim
    for label, shapes, spiky, with_dense in (
        ("lora 2^20", [(128, 512), (512, 128)] * 8, False, True),
        ("lora 2^24", [(128, 4096), (4096, 128)] * 16, False, False),
        ("spiky 2^24", [(128, 4096), (4096, 128)] * 16, True, False),
    ):
        grad_dim = sum(r * c for r, c in shapes)
        per_matrix = max(1, k // len(shapes))
        k1 = 2 ** (int(math.log2(per_matrix)) // 2)
        k2 = per_matrix // k1
        methods = [f"sjlt/{s}" for s in args.nonzeros] + (["dense"] if with_dense else []) + [f"kron {k1}x{k2}"]
        stats: dict[str, dict[str, list[float]]] = {m: {"norm": [], "cos": [], "rho": [], "s": []} for m in methods}
        print(f"\naccuracy: {label}: {records} records in {tasks} tasks, {len(shapes)} LoRA matrices, "
              f"grad_dim {grad_dim:,}, proj_dim {k}" + (" (0.01% of coordinates 300x)" if spiky else ""))
        for seed in range(3):
            us, vs, spikes = lora_factors(records, tasks, shapes, tokens, seed, spiky)
            grads = materialize(us, vs, spikes)
            norms, cos, values = scores(gram(grads), tasks)
            off = ~torch.eye(records, dtype=torch.bool)
            for method in methods:
                t0 = time.perf_counter()
                if method.startswith("kron"):
                    if spikes is not None:  # spikes are not a Kronecker structure: not comparable
                        continue
                    x = kronecker(us, vs, k1, k2, seed)
                else:
                    name, _, s = method.partition("/")
                    options = {"nonzeros": int(s)} if s else {}
                    x = make_projector(name, grad_dim, k, seed, "cpu", **options).project(grads)
                elapsed = time.perf_counter() - t0
                pnorms, pcos, pvalues = scores(gram(x), tasks)
                st = stats[method]
                st["norm"] += (pnorms / norms - 1).abs().tolist()
                st["cos"] += (pcos - cos)[off].abs().tolist()
                st["rho"].append(spearman(pvalues, values))
                st["s"].append(elapsed)
            del grads
        print(f"{'method':>12} {'norm err mean':>13} {'max':>7} {'cos err mean':>12} {'max':>7} "
              f"{'spearman':>8} {'min':>6} {'s':>6}")
        for method, st in stats.items():
            if not st["norm"]:
                continue
            print(f"{method:>12} {np.mean(st['norm']):13.4f} {np.max(st['norm']):7.4f} {np.mean(st['cos']):12.4f} "
                  f"{np.max(st['cos']):7.4f} {np.mean(st['rho']):8.4f} {np.min(st['rho']):6.3f} "
                  f"{np.mean(st['s']):6.2f}")
        sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1M,128M", help="gradient sizes, e.g. 1M,128M or 1048576 (default: 1M,128M)")
    parser.add_argument("--proj-dim", type=int, default=8192)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="warm calls per projector (best is reported)")
    parser.add_argument("--nonzeros", default="1,2,4", help="sjlt nonzeros per coordinate to compare")
    parser.add_argument("--projectors", default="sjlt,dense")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's)")
    parser.add_argument("--accuracy", action="store_true", help="also run the accuracy study (~10 GB, minutes)")
    parser.add_argument("--accuracy-only", action="store_true")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    args.sizes = [parse_size(s) for s in args.sizes.split(",") if s]
    args.nonzeros = [int(s) for s in args.nonzeros.split(",") if s] if "sjlt" in args.projectors else []
    if not args.accuracy_only:
        cost_table(args)
    if args.accuracy or args.accuracy_only:
        accuracy(args)


if __name__ == "__main__":
    main()
