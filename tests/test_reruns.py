"""Reruns that keep their work and messages that tell the truth: tolerances never invalidate an output, the advice
after a model change ends the loop, a resumed warm-up keeps what it skipped, skipped records can be retried, and
estimate, score and select take what users bring (a reference adapter, integer task names)."""

from __future__ import annotations

import json
import logging
import re
import shlex
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import small_options
from tests.test_warmup_scale import dropout_model, train_log  # noqa: F401 - dropout_model is a fixture
from tive.cli import main
from tive.config import FeaturesOptions, WarmupOptions
from tive.errors import TiveError
from tive.stages import run_features, run_prepare, run_score, run_select, run_warmup


def manifest(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "manifest.jsonl").read_text().splitlines()]


def read(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.fixture
def own_data(small_data: Path, tmp_path: Path) -> Path:
    """A private copy of the 140-record demo data (its images may be broken by the test)."""
    folder = tmp_path / "data"
    shutil.copytree(small_data.parent, folder)
    return folder / small_data.name


def single_use_images(data: Path, n: int) -> list[tuple[int, str]]:
    """(record index, image path) of `n` records whose image no other record uses."""
    records = json.loads(data.read_text())
    uses = Counter(r.get("image") for r in records)
    return [(i, r["image"]) for i, r in enumerate(records) if r.get("image") and uses[r["image"]] == 1][:n]


def prepare_args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["prepare", str(data), "--out", str(out), "--images", str(data.parent / "images"), "--task-field",
            "dataset", *extra]


# ------------------------------------------------------------------------------------------ tolerances (item 7)
def test_tive_run_again_with_other_tolerances_keeps_every_stage(small_run: Path, small_data: Path, tmp_path: Path,
                                                               capsys):
    """The stop message's advice (raise --max-bad-fraction), and the other operational settings, given to `tive run`
    on the existing directory: every stage finds its work done; nothing is recomputed or refused."""
    run = tmp_path / "run"
    shutil.copytree(small_run, run)
    capsys.readouterr()
    assert main(["run", str(small_data), "--out", str(run), "--images", str(small_data.parent / "images"),
                 "--task-field", "dataset", "--model", "tiny", "--seed", "1", "--epochs", "2", "--proj-dim", "512",
                 "--chunk-size", "32", "--budget", "0.2", "--select-seed", "5",
                 "--max-bad-fraction", "0.3", "--on-bad-record", "skip", "--progress-interval", "5",
                 "--wait-timeout", "60", "--loader-workers", "0"]) == 0
    out = capsys.readouterr().out
    for stage in ("prepare", "warmup", "features"):
        assert re.search(rf"^{stage}: .*nothing to do", out, re.M), stage
    assert (run / "subset.json").read_bytes() == (small_run / "subset.json").read_bytes()
    assert read(run / "features" / "meta.json") == read(small_run / "features" / "meta.json")


def test_a_lower_cap_rechecks_the_recorded_counts_and_says_so(own_data: Path, tmp_path: Path, capsys):
    for _, image in single_use_images(own_data, 12):
        (own_data.parent / "images" / image).unlink()
    run = tmp_path / "run"
    assert main(prepare_args(own_data, run, "--max-bad-fraction", "0.2")) == 0
    assert sum(row["status"] != "ok" for row in manifest(run)) == 12
    capsys.readouterr()
    assert main(prepare_args(own_data, run, "--max-bad-fraction", "0.1")) == 0  # 12 of 140 is within 10%
    out = capsys.readouterr().out
    assert "nothing to do" in out and "re-checked" in out and "12 of 140" in out and "0.1" in out
    assert main(prepare_args(own_data, run, "--max-bad-fraction", "0.05")) == 2
    err = capsys.readouterr().err
    assert "12 of 140 records" in err and "--max-bad-fraction 0.05" in err and "Traceback" not in err
    assert main(prepare_args(own_data, run, "--on-bad-record", "error")) == 2
    assert "--on-bad-record error" in capsys.readouterr().err
    assert sum(row["status"] != "ok" for row in manifest(run)) == 12  # the run is as it was


def test_a_finished_stages_skips_are_rechecked_against_the_policy_of_the_command():
    from tive.badrecords import recheck

    assert recheck("features", 0, 100, "error", 0.01) is None
    assert recheck("features", 5, 100, "skip", 0.01, ran_with=0.01) is None  # 10 or fewer never stop a stage
    assert recheck("features", 12, 100, "skip", 0.2, ran_with=0.2) is None
    assert "re-checked: its 12 of 100 skipped records are within --max-bad-fraction 0.15 (it ran with 0.2)" in \
        recheck("features", 12, 100, "skip", 0.15, ran_with=0.2)
    assert "re-checked" in recheck("features", 12, 100, "skip", 0.15)  # the cap it ran with not known: said
    with pytest.raises(TiveError, match=r"features: 12 of 100 records were skipped .*first: record 3: x.*more than "
                                        r"--max-bad-fraction 0.1 allows"):
        recheck("features", 12, 100, "skip", 0.1, ran_with=0.2, first="record 3: x")
    with pytest.raises(TiveError, match="--on-bad-record error stops at the first one"):
        recheck("warmup", 1, 100, "error", 0.5)


# ------------------------------------------------------------------------------------------ model change (item 4)
def perturb_weights(model: Path) -> None:
    from safetensors.torch import load_file, save_file

    weights = load_file(model / "model.safetensors")
    save_file({name: tensor + 1e-3 for name, tensor in weights.items()}, model / "model.safetensors",
              metadata={"format": "pt"})


def test_the_advice_after_a_model_change_redoes_the_warmup_and_the_features(small_data: Path, tiny_model_dir: Path,
                                                                           tmp_path: Path, capsys):
    from tive.model.loading import model_fingerprint

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    run = tmp_path / "run"
    assert main(prepare_args(small_data, run)) == 0
    assert main(["warmup", str(run), "--model", str(model), "--warmup-fraction", "0.05", "--lora-rank", "4",
                 "--device", "cpu"]) == 0
    assert main(["features", str(run), "--proj-dim", "64", "--chunk-size", "70", "--device", "cpu"]) == 0
    perturb_weights(model)
    capsys.readouterr()
    # The warm-up sees the change (it used to answer "already done"): refused without --force, naming it.
    assert main(["warmup", str(run), "--model", str(model), "--warmup-fraction", "0.05", "--lora-rank", "4",
                 "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "changed since the warm-up" in err and "--force" in err
    assert main(["features", str(run), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "changed since the warm-up" in err and "Traceback" not in err
    advice = re.findall(r"`(tive [^`]+)`", err)
    assert [command.split()[1] for command in advice] == ["warmup", "features"]
    for command in advice:  # exactly what the message says, in order
        assert main(shlex.split(command)[1:]) == 0, command
    warm = read(run / "warmup" / "warmup.json")
    assert warm["model_fingerprint"] == model_fingerprint(model) == warm["settings"]["model_fingerprint"]
    meta = read(run / "features" / "meta.json")
    assert meta["complete"] and meta["request"]["model_fingerprint"] == model_fingerprint(model)
    assert meta["request"]["adapter_sha256"] == warm["adapter_sha256"] and meta["proj_dim"] == 64
    assert main(["score", str(run)]) == 0


def test_an_interrupted_warmup_does_not_resume_onto_changed_base_weights(prepared_run: Path, dropout_model: Path,
                                                                        tmp_path: Path, monkeypatch, caplog):
    import tive.model.encode

    options = WarmupOptions(model=str(dropout_model), epochs=1, batch_size=2, learning_rate=1e-2, lora_rank=4,
                            seed=0, device="cpu", checkpoint_steps=2)
    real = tive.model.encode.answer_loss_per_record
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(tive.model.encode, "answer_loss_per_record", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_warmup(prepared_run, options)
    monkeypatch.setattr(tive.model.encode, "answer_loss_per_record", real)
    assert (prepared_run / "warmup" / "checkpoint" / "state.pt").is_file()
    perturb_weights(dropout_model)
    with caplog.at_level(logging.INFO, logger="tive"):
        resumed = run_warmup(prepared_run, options)
    assert "resuming" not in caplog.text  # the LoRA state of the old weights is not put on the new ones
    fresh = tmp_path / "fresh"
    shutil.copytree(prepared_run, fresh, ignore=shutil.ignore_patterns("warmup"))
    assert run_warmup(fresh, options)["adapter_sha256"] == resumed["adapter_sha256"]


@pytest.fixture
def prepared_run(small_data: Path, tmp_path: Path) -> Path:
    run = tmp_path / "prepared"
    assert main(prepare_args(small_data, run)) == 0
    return run


# ------------------------------------------------------------------------------------------ warm-up resume (item 5)
def test_a_resumed_warmup_keeps_the_records_it_skipped_before_its_checkpoint(own_data: Path, dropout_model: Path,
                                                                            tmp_path: Path, monkeypatch):
    """One broken image in step 1, interrupted in step 4 (checkpoint after step 2): the resumed warm-up reports the
    skipped record and the truncations of steps 1-2 as the uninterrupted one does."""
    import tive.model.encode
    from tive.model.warmup import epoch_orders, warmup_sample

    prepared = tmp_path / "prepared"
    assert main(prepare_args(own_data, prepared)) == 0
    ok = [row for row in manifest(prepared) if row["status"] == "ok"]
    positions = warmup_sample([row["task"] for row in ok], 0.08, 0)
    warm = [ok[p]["index"] for p in positions]
    first_step = [warm[i] for i in epoch_orders(len(warm), 1, 0)[0][:2]]
    records = json.loads(own_data.read_text())
    broken = next(i for i in first_step if records[i].get("image"))
    (own_data.parent / "images" / records[broken]["image"]).write_bytes(b"not an image any more")

    options = WarmupOptions(model=str(dropout_model), epochs=1, batch_size=2, learning_rate=1e-2, lora_rank=4,
                            seed=0, device="cpu", checkpoint_steps=2, max_length=90)
    whole = tmp_path / "whole"
    shutil.copytree(prepared, whole)
    reference = run_warmup(whole, options)
    assert str(broken) in reference["skipped"] and reference["truncated_records"] > 0

    real = tive.model.encode.answer_loss_per_record
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:  # one forward pass a step: this is step 4
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    run = tmp_path / "resumed"
    shutil.copytree(prepared, run)
    monkeypatch.setattr(tive.model.encode, "answer_loss_per_record", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_warmup(run, options)
    monkeypatch.setattr(tive.model.encode, "answer_loss_per_record", real)
    assert torch.load(run / "warmup" / "checkpoint" / "state.pt", weights_only=False)["step"] == 2
    resumed = run_warmup(run, options)
    assert resumed["skipped"] == reference["skipped"]
    assert resumed["truncated_records"] == reference["truncated_records"]
    assert resumed["adapter_sha256"] == reference["adapter_sha256"]
    assert train_log(run) == train_log(whole)


# ------------------------------------------------------------------------------------------ retry (item 6)
def test_retry_skipped_recomputes_exactly_the_records_whose_reason_can_change(own_data: Path, tmp_path: Path,
                                                                              monkeypatch, capsys):
    from tive.features.grads import BatchedGradients
    from tive.io import sha256_json

    prepare, warmup, features, select = small_options(own_data)
    features.proj_dim, features.grad_batch_size = 64, 4
    run = tmp_path / "run"
    run_prepare(own_data, run, prepare)
    run_warmup(run, warmup)
    broken = single_use_images(own_data, 2)
    originals = {}
    for _, image in broken:
        path = own_data.parent / "images" / image
        originals[path] = path.read_bytes()
        path.write_bytes(b"")  # e.g. a copy that had not finished
    real = BatchedGradients.norms_and_projection
    poisoned: list[bool] = []

    def first_record_nan(self, inputs, projector):
        norms, projected = real(self, inputs, projector)
        if not poisoned:
            poisoned.append(True)
            norms[0] = float("nan")
        return norms, projected

    monkeypatch.setattr(BatchedGradients, "norms_and_projection", first_record_nan)
    before = run_features(run, features)
    monkeypatch.setattr(BatchedGradients, "norms_and_projection", real)
    assert len(before["skipped"]) == 3
    not_finite = [int(i) for i, reason in before["skipped"].items() if "not finite" in reason]
    assert len(not_finite) == 1
    old_rows = {row["index"]: position for position, row in enumerate(r for r in manifest(run) if r["status"] == "ok")}
    old_x = np.load(run / "features" / "features.npy")
    run_score(run)
    run_select(run, select)

    # Nothing fixed yet: the images are retried, fail again, and the store stays as it was.
    capsys.readouterr()
    run_features(run, FeaturesOptions(**{**features.__dict__, "retry_skipped": True}))
    assert read(run / "features" / "meta.json")["skipped"] == before["skipped"]
    for path, data in originals.items():
        path.write_bytes(data)
    # Fixed: they are computed and merged. A commit cut short (killed between moving the arrays and meta.json into
    # place) is finished by the next features run.
    import tive.stages.retry

    real_replace, moves = tive.stages.retry.os.replace, []

    def killed_after_the_first_move(source, target):  # (os.replace is os's: the atomic writes pass here too)
        if Path(source).parent.name == "retry" and Path(target).parent.name == "features":
            moves.append(target)
            if len(moves) == 2:
                raise KeyboardInterrupt
        real_replace(source, target)

    monkeypatch.setattr(tive.stages.retry.os, "replace", killed_after_the_first_move)
    capsys.readouterr()
    with pytest.raises(KeyboardInterrupt):
        run_features(run, FeaturesOptions(**{**features.__dict__, "retry_skipped": True}))
    monkeypatch.setattr(tive.stages.retry.os, "replace", real_replace)
    assert "2 of 3 skipped records were skipped for a reason that can change" in capsys.readouterr().out
    assert moves[0].name == "features.npy" and (run / "features" / "retry" / "merged.json").is_file()
    meta = run_features(run, features)
    assert "finished merging the records retried before" in capsys.readouterr().out
    assert list(meta["skipped"]) == [str(not_finite[0])]  # the record skipped for its content is not retried
    assert meta["retries"][0]["records"] == 2 and meta["retries"][0]["recovered"] == 2
    rows = manifest(run)
    ok = [row for row in rows if row["status"] == "ok"]
    assert [row["index"] for row in rows if row["status"] != "ok"] == not_finite
    x, norms = np.load(run / "features" / "features.npy"), np.load(run / "features" / "norms.npy")
    assert x.shape == (len(ok), 64) and norms.shape == (len(ok),)
    assert meta["records"] == len(ok) and meta["records_sha256"] == sha256_json([row["index"] for row in ok])
    for position, row in enumerate(ok):  # the rows computed before are kept, byte for byte, in manifest order
        if row["index"] in old_rows:
            assert x[position].tobytes() == old_x[old_rows[row["index"]]].tobytes()
        assert row["grad_norm"] == pytest.approx(float(norms[position]))
    assert all(row["value"] is None and row["selected"] is None for row in rows)  # new features: score again
    assert not (run / "features" / "retry").exists()

    # The retried rows are what a full computation gives them (to float rounding: other batches).
    full = tmp_path / "full"
    shutil.copytree(run, full)
    run_features(full, FeaturesOptions(**{**features.__dict__, "force": True}))
    x_full = np.load(full / "features" / "features.npy").astype(np.float32)
    full_ok = [row["index"] for row in manifest(full) if row["status"] == "ok"]
    for index, _ in broken:
        np.testing.assert_allclose(x[[row["index"] for row in ok].index(index)].astype(np.float32),
                                   x_full[full_ok.index(index)], atol=2e-3)
    run_score(run)
    run_select(run, select)
    capsys.readouterr()
    run_features(run, FeaturesOptions(**{**features.__dict__, "retry_skipped": True}))
    assert "no skipped record to retry" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------ estimate (item 3)
def test_estimate_with_a_reference_adapter_times_the_features_with_that_adapter(small_data: Path,
                                                                               tiny_model_dir: Path,
                                                                               tmp_path: Path, capsys):
    from tive.model.loading import LoraSettings, add_lora, load_base

    run = tmp_path / "run"
    assert main(prepare_args(small_data, run)) == 0
    model, _ = load_base(tiny_model_dir)
    adapter = tmp_path / "adapter"
    add_lora(model, LoraSettings(4, 8.0, ["q_proj", "v_proj"], []), seed=0).save_pretrained(adapter)
    assert main(["estimate", str(run), "--model", str(tiny_model_dir), "--reference-adapter", str(adapter),
                 "--proj-dim", "64", "--grad-batch-size", "2", "--device", "cpu", "--feature-batches", "1"]) == 0
    result = read(run / "estimate.json")
    assert result["warmup"]["steps"] == 0 and result["warmup"]["seconds"] == 0
    assert result["warmup"]["reference_adapter"] == str(adapter.resolve())
    lora_numbers = sum(p.numel() for name, p in model.named_parameters() if ".lora_" in name)
    assert result["features"]["grad_dim"] == lora_numbers and result["features"]["records"] == 140
    assert result["total_seconds"] == pytest.approx(result["features"]["seconds"])
    assert "reference adapter" in capsys.readouterr().out
    # The FLOP accounting prices the adapter's own LoRA shape, and no warm-up.
    from tive.cost import model_shape
    from tive.stages.estimate import _lora_shape

    rank, targets, epochs = _lora_shape({"reference_adapter": str(adapter.resolve())}, model_shape(tiny_model_dir))
    assert (rank, sorted(targets), epochs) == (4, ["q_proj", "v_proj"], 0)
    assert result["flops"]["selection"]["warmup_flops"] == 0 < result["flops"]["selection"]["features_flops"]


# ------------------------------------------------------------------------------------------ task names (item 8)
def byo_run(tmp_path: Path, tasks: list) -> Path:
    rows = [{"index": i, "id": f"r{i}", "task": t, "status": "ok", "grad_norm": 1.0 + (i % 3)}
            for i, t in enumerate(tasks)]
    run = tmp_path / "byo"
    (run / "features").mkdir(parents=True)
    (run / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    rng = np.random.default_rng(0)
    np.save(run / "features" / "features.npy", rng.normal(size=(len(rows), 8)).astype(np.float32))
    np.save(run / "features" / "norms.npy", np.array([r["grad_norm"] for r in rows]))
    return run


def test_integer_task_names_are_task_names(tmp_path: Path, capsys):
    """Cluster ids as tasks: scored and selected as the strings "0", "1", "2"."""
    run = byo_run(tmp_path, [0] * 20 + [1] * 10 + [2] * 10)
    assert main(["score", str(run)]) == 0
    assert main(["select", str(run), "--budget", "8"]) == 0
    tasks = read(run / "tasks.json")
    assert set(tasks) == {"0", "1", "2"}
    assert all(info["value"] is not None and info["budget"] > 0 for info in tasks.values())
    assert sum(info["selected"] for info in tasks.values()) == 8
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize("task", [None, [1, 2], {"name": "a"}, True])
def test_a_task_name_that_is_not_a_scalar_is_refused_naming_the_record(task, tmp_path: Path, capsys):
    run = byo_run(tmp_path, ["a", "b", task, "a"])
    assert main(["score", str(run)]) == 2
    err = capsys.readouterr().err
    assert "line 3" in err and "'r2'" in err and "task" in err and "Traceback" not in err


def test_a_report_that_fails_after_the_selection_is_committed_is_a_warning(tmp_path: Path, monkeypatch, capsys):
    import tive.stages.select

    run = byo_run(tmp_path, ["a"] * 10 + ["b"] * 10)
    assert main(["score", str(run)]) == 0

    def broken(*args, **kwargs):
        raise TypeError("unsupported operand type(s) for +: 'int' and 'str'")

    monkeypatch.setattr(tive.stages.select, "task_table", broken)
    assert main(["select", str(run), "--budget", "4"]) == 0
    captured = capsys.readouterr()
    assert f"`tive report {run}`" in captured.out and "warning" in captured.out
    assert "Traceback" not in captured.err
    assert sum(info["selected"] for info in read(run / "tasks.json").values()) == 4
