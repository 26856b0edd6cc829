"""Scale benchmark: wall time and peak anonymous memory of tive's stages, from one run that makes its own input.

    python benchmarks/scale.py memory [--out DIR] [--small 1000] [--large 12000]
    python benchmarks/scale.py 665k   [--out DIR] [--records 665298]
    python benchmarks/scale.py ranks  [--out DIR] [--small 10000] [--large 665298]

`memory`: every stage (prepare, warmup, features, score, select) on 1,000 and on 12,000 demo records with a tiny
random-weight LLaVA-1.5-shaped model whose processor takes 336-px images (CLIP patch 14: 576 image tokens per
image, 1.35 MB of pixels), and the growth of each stage's peak memory between the two. Target: ≤ 300 MB.

`665k`: a 665,298-record LLaVA-format file with images (blocks of the demo generator, ~400K distinct images), then
- `tive prepare` on it (target ≤ 10 min, ≤ 4 GB);
- `tive score` + `tive select` on a bring-your-own store of 665,298 x 8192 float16 features (≤ 2 min, ≤ 3 GB);
- `tive select` on the prepared run with those features (≤ 3 min, ≤ 4 GB);
- `tive select --choose diverse` on the store (no target: the cost of the diversity-aware choice).

`ranks`: what one rank of a launch holds as the dataset grows (issue 20, item 9). Records of the real mix's length
(~1.5 KB of JSON each: the demo generator's conversations lengthened with more turns; the real file is ~1 GB for
665K records; images shared between records, so that only the text grows), at two sizes; at each, `tive prepare`,
then a warm-up on 200 records (`--warmup-fraction 200/N`, the built-in tiny model) and the features of one
256-record chunk (`--shard 0/K`, K = the number of chunks). Target: the two rank commands use at most 500 MB more
peak anonymous memory at the large size than at the small; prepare ≤ 10 min at 665K.

Each command runs as its own process; its peak memory is the sum of RssAnon over its process tree (DataLoader
workers included), sampled every 0.1 s: pages of a memory-mapped store are the kernel's to drop and do not count.
Timings on a shared machine vary; the figures are one run's, printed with the machine's CPU count.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

TIVE = [sys.executable, "-m", "tive"]


# ------------------------------------------------------------------------------------------------ measuring
def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parent = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            kids.setdefault(parent, []).append(int(entry))
    return kids


def _anon_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def measure(command: list[str], log: Path) -> dict[str, float]:
    """Run `command` (output to `log`); its wall seconds and the peak RssAnon (MB) of its process tree."""
    started = time.monotonic()
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        peak = 0
        while process.poll() is None:
            kids, tree, todo = _children(), [], [process.pid]
            while todo:
                pid = todo.pop()
                tree.append(pid)
                todo += kids.get(pid, [])
            peak = max(peak, sum(_anon_kb(pid) for pid in tree))
            time.sleep(0.1)
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({process.returncode}); see {log}")
    return {"seconds": time.monotonic() - started, "peak_mb": peak / 1024}


# --------------------------------------------------------------------------------------------------- memory
def memory(out: Path, sizes: tuple[int, int]) -> None:
    from tive.demo_data import make_demo_dataset
    from tive.model.tiny import build_tiny_model

    model = out / "llava336"
    if not (model / "config.json").is_file():
        build_tiny_model(model, ["What is in the image? A red circle, two blue squares."] * 50, seed=0,
                         image_size=336, patch_size=14)
    results: dict[int, dict[str, dict[str, float]]] = {}
    for n in sizes:
        data = make_demo_dataset(out / f"data{n}", n_records=n, seed=0)
        run = out / f"run{n}"
        shutil.rmtree(run, ignore_errors=True)
        stages = {
            "prepare": ["prepare", str(data), "--out", str(run), "--images", str(data.parent / "images"),
                        "--task-field", "dataset"],
            "warmup": ["warmup", str(run), "--model", str(model), "--epochs", "1", "--lora-rank", "8",
                       "--learning-rate", "1e-3", "--device", "cpu"],
            "features": ["features", str(run), "--proj-dim", "8192", "--device", "cpu"],
            "score": ["score", str(run)],
            "select": ["select", str(run)],
        }
        results[n] = {name: measure(TIVE + args, out / f"{name}{n}.log") for name, args in stages.items()}
        for name, figures in results[n].items():
            print(f"{n:>6} records  {name:<8} {figures['seconds']:8.1f} s  {figures['peak_mb']:8.0f} MB", flush=True)
    small, large = sizes
    print(f"\npeak anonymous memory, {small:,} vs {large:,} records, tiny LLaVA-1.5 with a 336-px processor "
          f"(576 image tokens), {os.cpu_count()} CPUs:")
    print(f"| stage | {small:,} records | {large:,} records | growth | target |")
    print("|---|---|---|---|---|")
    for name in results[small]:
        a, b = results[small][name]["peak_mb"], results[large][name]["peak_mb"]
        print(f"| {name} | {a:,.0f} MB | {b:,.0f} MB | {b - a:+,.0f} MB | {'ok' if b - a <= 300 else 'OVER'} (≤ 300 MB) |")
    (out / "memory.json").write_text(json.dumps(results, indent=2))


# ----------------------------------------------------------------------------------------------------- 665k
BLOCK = 20_000


def make_665k(out: Path, n_records: int) -> tuple[Path, Path]:
    """A LLaVA-format JSON of `n_records` with images: blocks of the demo generator, each with its own images."""
    from tive.demo_data import make_demo_dataset

    root = out / "blocks"
    data = out / "llava_mix.json"
    if data.is_file():
        return data, root
    records = []
    for block, start in enumerate(range(0, n_records, BLOCK)):
        size = min(BLOCK, n_records - start)
        folder = root / f"b{block:03d}"
        made = folder / "demo.json" if (folder / "demo.json").is_file() else make_demo_dataset(folder, size, block)
        for record in json.loads(made.read_text()):
            record["id"] = f"b{block:03d}-{record['id']}"
            if "image" in record:
                record["image"] = f"b{block:03d}/images/{record['image']}"
            records.append(record)
        print(f"generated {len(records):,} records", flush=True)
    tmp = data.with_suffix(".tmp")
    tmp.write_text(json.dumps(records, indent=1))
    tmp.replace(data)
    return data, root


def write_store(store: Path, manifest_rows: list[dict], dim: int, seed: int = 0) -> None:
    """A bring-your-own run directory: manifest.jsonl and features/{features,norms}.npy (float16 features)."""
    (store / "features").mkdir(parents=True, exist_ok=True)
    tasks = sorted({row["task"] for row in manifest_rows})
    task_of = np.array([tasks.index(row["task"]) for row in manifest_rows])
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((len(tasks), dim)).astype(np.float32)
    features = np.lib.format.open_memmap(store / "features" / "features.npy", mode="w+", dtype=np.float16,
                                         shape=(len(manifest_rows), dim))
    for start in range(0, len(manifest_rows), 8192):
        stop = min(start + 8192, len(manifest_rows))
        block = rng.standard_normal((stop - start, dim), dtype=np.float32) + centres[task_of[start:stop]]
        features[start:stop] = block
    features.flush()
    del features
    np.save(store / "features" / "norms.npy", rng.uniform(0.5, 2.0, len(manifest_rows)) * (1 + task_of % 3))
    with open(store / "manifest.jsonl", "w") as f:
        for row in manifest_rows:
            f.write(json.dumps({key: row[key] for key in ("index", "id", "task", "status")}) + "\n")


def big(out: Path, n_records: int, dim: int = 8192) -> None:
    started = time.monotonic()
    data, images = make_665k(out, n_records)
    print(f"input: {data} ({data.stat().st_size / 1e6:,.0f} MB) in {time.monotonic() - started:.0f} s", flush=True)
    run = out / "run"
    shutil.rmtree(run, ignore_errors=True)
    figures = {"prepare": measure(TIVE + ["prepare", str(data), "--out", str(run), "--images", str(images),
                                          "--task-field", "dataset"], out / "prepare.log")}
    rows = [json.loads(line) for line in (run / "manifest.jsonl").read_text().splitlines()]
    ok = [row for row in rows if row["status"] == "ok"]
    store = out / "byo"
    if not (store / "features" / "norms.npy").is_file() or len(np.load(store / "features" / "norms.npy")) != len(ok):
        shutil.rmtree(store, ignore_errors=True)
        write_store(store, ok, dim)
    (store / "manifest.jsonl").write_text("".join(
        json.dumps({key: row[key] for key in ("index", "id", "task", "status")}) + "\n" for row in ok))
    figures["score (store)"] = measure(TIVE + ["score", str(store)], out / "score_store.log")
    figures["select (store)"] = measure(TIVE + ["select", str(store)], out / "select_store.log")
    figures["select --choose diverse (store)"] = measure(TIVE + ["select", str(store), "--choose", "diverse"],
                                                         out / "select_diverse.log")
    # The prepared run with the same features: values copied into its manifest, the store's arrays linked.
    scored = {row["index"]: row for row in map(json.loads, (store / "manifest.jsonl").read_text().splitlines())}
    with open(run / "manifest.jsonl", "w") as f:
        for row in rows:
            if row["index"] in scored:
                row = {**row, "grad_norm": scored[row["index"]]["grad_norm"], "value": scored[row["index"]]["value"]}
            f.write(json.dumps(row) + "\n")
    (run / "features").symlink_to(store / "features")
    figures["select (prepared)"] = measure(TIVE + ["select", str(run)], out / "select_run.log")
    score_select = figures["score (store)"]["seconds"] + figures["select (store)"]["seconds"]
    score_select_mb = max(figures["score (store)"]["peak_mb"], figures["select (store)"]["peak_mb"])
    print(f"\n{n_records:,} records ({len(ok):,} ok), {dim}-dim float16 store, {os.cpu_count()} CPUs:")
    print("| stage | wall | peak anonymous memory | target |")
    print("|---|---|---|---|")
    targets = {"prepare": (600, 4096), "select (prepared)": (180, 4096)}
    for name, figure in figures.items():
        limit = targets.get(name)
        verdict = "" if limit is None else ("ok" if figure["seconds"] <= limit[0] and figure["peak_mb"] <= limit[1]
                                            else "OVER") + f" (≤ {limit[0] / 60:g} min, ≤ {limit[1] / 1024:g} GB)"
        print(f"| {name} | {figure['seconds']:,.0f} s | {figure['peak_mb']:,.0f} MB | {verdict} |")
    report = run / "report.html"
    print(f"report.html of the prepared run (written by select, examples with thumbnails): "
          f"{report.stat().st_size / 1e6:.2f} MB")
    verdict = "ok" if score_select <= 120 and score_select_mb <= 3072 else "OVER"
    print(f"| score + select (store) | {score_select:,.0f} s | {score_select_mb:,.0f} MB | {verdict} (≤ 2 min, ≤ 3 GB) |")
    (out / "665k.json").write_text(json.dumps(figures, indent=2))


# ---------------------------------------------------------------------------------------------------- ranks
REAL_RECORDS = 665_298  # LLaVA-1.5's mix

# Filler turns that bring a demo record to the real mix's length (~1.5 KB of JSON).
_FILLER = [
    ("Describe the scene in more detail, including the positions of the objects relative to each other.",
     "The objects are arranged loosely across the frame: the larger shapes sit towards the centre while the "
     "smaller ones are scattered near the edges, and none of them overlap. The background is plain, so the "
     "colours of the shapes stand out clearly against it."),
    ("What would change if one of the shapes were removed from the picture?",
     "Removing a shape would leave the composition slightly unbalanced, since the remaining objects would no "
     "longer fill the space evenly; the counts asked about earlier would also drop by one for that colour."),
    ("Is there anything unusual about the image that a careful observer should point out?",
     "Nothing is hidden or partly covered: every shape is drawn in full with a crisp outline, the lighting is "
     "flat, and there is no text, shadow or texture that would change the answers given above. The only thing "
     "worth noting is that shapes of the same colour can differ in size, which matters when they are counted."),
]


def make_long(out: Path, n_records: int, block: int = 2000) -> tuple[Path, Path]:
    """A LLaVA-format JSON of `n_records` records of ~1.5 KB each: one demo block (with its images) repeated, every
    copy with its own id and two more turns of conversation."""
    from tive.demo_data import make_demo_dataset

    data = out / f"long{n_records}.json"
    made = out / "block" / "demo.json"
    if not made.is_file():
        made = make_demo_dataset(out / "block", block, 0)
    if data.is_file():
        return data, made.parent / "images"
    base = json.loads(made.read_text())
    with open(data.with_suffix(".tmp"), "w") as f:
        f.write("[\n")
        for i in range(n_records):
            record = dict(base[i % len(base)])
            record["id"] = f"{record['id']}-{i}"
            record["conversations"] = list(record["conversations"]) + [
                turn for question, answer in _FILLER
                for turn in ({"from": "human", "value": question}, {"from": "gpt", "value": answer})]
            f.write(json.dumps(record) + (",\n" if i + 1 < n_records else "\n"))
        f.write("]\n")
    data.with_suffix(".tmp").replace(data)
    return data, made.parent / "images"


def ranks(out: Path, sizes: tuple[int, int]) -> None:
    results: dict[int, dict[str, dict[str, float]]] = {}
    for n in sizes:
        data, images = make_long(out, n)
        run = out / f"ranks{n}"
        shutil.rmtree(run, ignore_errors=True)
        chunks = -(-n // 256)
        stages = {
            "prepare": ["prepare", str(data), "--out", str(run), "--images", str(images), "--task-field", "dataset"],
            "warmup (200 records)": ["warmup", str(run), "--model", "tiny", "--epochs", "1", "--device", "cpu",
                                     "--warmup-fraction", f"{200 / n:.8f}"],
            "features (one 256-record chunk)": ["features", str(run), "--shard", f"0/{chunks}", "--proj-dim", "512",
                                                "--device", "cpu"],
        }
        results[n] = {name: measure(TIVE + args, out / f"ranks_{name.split()[0]}{n}.log")
                      for name, args in stages.items()}
        size_mb = data.stat().st_size / 1e6
        for name, figures in results[n].items():
            print(f"{n:>7} records ({size_mb:,.0f} MB)  {name:<32} {figures['seconds']:8.1f} s  "
                  f"{figures['peak_mb']:8.0f} MB", flush=True)
    ranks_table(results, sizes)
    (out / "ranks.json").write_text(json.dumps(results, indent=2))


def ranks_table(results: dict[int, dict[str, dict[str, float]]], sizes: tuple[int, int]) -> None:
    """Print `ranks`'s figures as a Markdown table, with the growth projected to the real mix's size."""
    small, large = sizes
    print(f"\npeak anonymous memory of one rank, {small:,} vs {large:,} records of ~1.5 KB, {os.cpu_count()} CPUs:")
    print(f"(the target is for {REAL_RECORDS:,} records against {small:,}: a smaller large size is judged by the growth "
          "its slope gives there)")
    print(f"| command | {small:,} records | {large:,} records | growth | target |")
    print("|---|---|---|---|---|")
    for name in results[small]:
        a, b = results[small][name]["peak_mb"], results[large][name]["peak_mb"]
        at_real = (b - a) / (large - small) * (REAL_RECORDS - small)
        target = "" if name == "prepare" else (
            ("ok" if at_real <= 500 else "OVER") + f" (≤ 500 MB at {REAL_RECORDS:,}: {at_real:+,.0f} MB)")
        print(f"| {name} | {a:,.0f} MB, {results[small][name]['seconds']:,.0f} s | {b:,.0f} MB, "
              f"{results[large][name]['seconds']:,.0f} s | {b - a:+,.0f} MB | {target} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("part", choices=["memory", "665k", "ranks"])
    parser.add_argument("--out", default="scale-bench", help="working folder (reused: a rerun skips generation)")
    parser.add_argument("--small", type=int, default=None, help="memory: 1000; ranks: 10000")
    parser.add_argument("--large", type=int, default=None, help="memory: 12000; ranks: 665298")
    parser.add_argument("--records", type=int, default=665_298)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.part == "memory":
        memory(out, (args.small or 1000, args.large or 12000))
    elif args.part == "ranks":
        ranks(out, (args.small or 10_000, args.large or 665_298))
    else:
        big(out, args.records)


if __name__ == "__main__":
    main()
