"""Nothing silently stale: features, values and selections are refused or cleared when what made them changed; the
run directory never touches the input; defaults that could mislead are refused."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import small_options
from tive.cli import main
from tive.config import FeaturesOptions, PrepareOptions, SelectOptions, WarmupOptions
from tive.errors import TiveError
from tive.stages import run_features, run_prepare, run_score, run_select, run_warmup


def manifest(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "manifest.jsonl").read_text().splitlines()]


def write_manifest(run: Path, rows: list[dict]) -> None:
    (run / "manifest.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))


@pytest.fixture
def run(small_run: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(small_run, copy)
    return copy


def data_of(run: Path) -> Path:
    return Path(json.loads((run / "prepare.json").read_text())["data"])


def test_features_of_an_older_warmup_are_refused_until_recomputed(run: Path):
    _, warmup, features, select = small_options(data_of(run))
    run_warmup(run, WarmupOptions(**{**warmup.__dict__, "seed": 2, "force": True}))  # a new adapter
    for stage in (lambda: run_score(run), lambda: run_select(run, select)):
        with pytest.raises(TiveError, match="another warm-up adapter.*rerun `tive features .*--force`"):
            stage()
    with pytest.raises(TiveError, match="other adapter_sha256.*--force"):  # 40 hours are not redone by accident
        run_features(run, features)
    run_features(run, FeaturesOptions(**{**features.__dict__, "force": True}))
    run_score(run)
    run_select(run, select)


def test_features_of_another_record_set_are_refused(run: Path):
    rows = manifest(run)
    rows[7]["status"] = "skipped: by hand"
    write_manifest(run, rows)
    with pytest.raises(TiveError, match="other records than manifest.jsonl's ok records.*tive features"):
        run_score(run)


def test_features_and_warmups_of_another_encoding_are_refused(run: Path):
    meta_path = run / "features" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["request"]["encoding_version"] = 1
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(TiveError, match="encoding version 1.*tive warmup .*--force"):
        run_score(run)
    marker = run / "warmup" / "warmup.json"
    warm = json.loads(marker.read_text())
    del warm["settings"]["encoding_version"]  # what a warm-up made before versions were recorded looks like
    marker.write_text(json.dumps(warm))
    with pytest.raises(TiveError, match="encoding version 1, this tive encodes records with version 2"):
        run_features(run, small_options(data_of(run))[2])


def test_new_features_clear_old_values_and_selections(run: Path):
    assert any(row["selected"] for row in manifest(run))
    run_features(run, FeaturesOptions(proj_dim=64, chunk_size=32, force=True))
    rows = manifest(run)
    assert all(row["value"] is None and row["selected"] is None for row in rows)
    assert all(row["grad_norm"] > 0 for row in rows)
    with pytest.raises(TiveError, match="run `tive score"):
        run_select(run, SelectOptions(budget="0.2"))


def test_features_with_nothing_to_do_do_not_load_the_model(run: Path, monkeypatch: pytest.MonkeyPatch, capsys):
    import tive.model.loading

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(tive.model.loading, "load_with_adapter", refuse)
    monkeypatch.setattr(tive.model.loading, "load_base", refuse)
    before = (run / "manifest.jsonl").read_bytes()
    run_features(run, small_options(data_of(run))[2])
    assert "nothing to do" in capsys.readouterr().out
    assert (run / "manifest.jsonl").read_bytes() == before  # values and selections kept: nothing changed


def test_leftover_chunks_without_provenance_are_not_reused(run: Path, small_run: Path):
    features = run / "features"
    shutil.rmtree(features)
    (features / "chunks").mkdir(parents=True)
    np.save(features / "chunks" / "chunk_000000.x.npy", np.ones((32, 512), dtype=np.float32))
    np.save(features / "chunks" / "chunk_000000.norm.npy", np.ones(32))
    (features / "chunks" / "chunk_000000.json").write_text(json.dumps({"rows": list(range(32))}))
    run_features(run, small_options(data_of(run))[2])
    for name in ("features.npy", "norms.npy"):
        assert (features / name).read_bytes() == (small_run / "features" / name).read_bytes()


def test_leftover_chunks_of_another_request_are_not_used_by_shards(run: Path, small_run: Path, capsys):
    """Processes that share a store discard nothing (another may be writing it), so a chunk counts only when its
    marker carries the store's request hash: chunks left by other settings are recomputed, not merged."""
    features = run / "features"
    options = small_options(data_of(run))[2]
    shutil.rmtree(features)
    (features / "chunks").mkdir(parents=True)
    np.save(features / "chunks" / "chunk_000001.x.npy", np.ones((32, 512), dtype=np.float16))
    np.save(features / "chunks" / "chunk_000001.norm.npy", np.ones(32))
    (features / "chunks" / "chunk_000001.json").write_text(json.dumps({"rows": list(range(32, 64)),
                                                                       "request_sha256": "another request"}))
    meta = run_features(run, FeaturesOptions(**{**options.__dict__, "shard": "0/2"}))
    assert not meta["complete"]  # shard 1's chunks (1 and 3) are still to compute: the leftover does not count
    assert "chunks still to compute (shards 1 of 2)" in capsys.readouterr().out
    meta = run_features(run, FeaturesOptions(**{**options.__dict__, "shard": "1/2"}))
    assert meta["complete"] and meta["shards"] == 2
    for name in ("features.npy", "norms.npy"):
        assert (features / name).read_bytes() == (small_run / "features" / name).read_bytes()


def test_rank_zero_gives_up_waiting_for_a_rank_that_died(run: Path, monkeypatch: pytest.MonkeyPatch):
    import tive.stages.features
    from tive.launch import Launch

    options = small_options(data_of(run))[2]
    shutil.rmtree(run / "features")
    monkeypatch.setattr(tive.stages.features, "POLL_SECONDS", 0.05)
    monkeypatch.setattr(tive.stages.features, "detect_launch", lambda shard: Launch(0, 2, 0, "torchrun"))
    with pytest.raises(TiveError, match=r"no new chunk for 0.3 s; still missing chunk\(s\) 1, 3 of rank\(s\) 1"):
        run_features(run, FeaturesOptions(**{**options.__dict__, "wait_timeout": 0.3}))


def test_a_chunk_that_does_not_fit_its_records_is_refused_at_the_merge(run: Path, monkeypatch: pytest.MonkeyPatch):
    import tive.stages.features

    options = small_options(data_of(run))[2]
    shutil.rmtree(run / "features")
    with monkeypatch.context() as patch:  # every chunk computed, the store left for someone else to complete
        patch.setattr(tive.stages.features, "complete_features", lambda *args, **kwargs: {})
        run_features(run, options)
    np.save(run / "features" / "chunks" / "chunk_000002.x.npy", np.zeros((32, 100), dtype=np.float32))
    with pytest.raises(TiveError, match=r"chunk_000002.x.npy: shape \(32, 100\).*expected \(32, 512\).*--force"):
        run_score(run)  # score completes a store whose chunks are all there: it checks them first


def test_select_writes_the_subset_before_the_manifest_and_tasks(run: Path, monkeypatch: pytest.MonkeyPatch):
    import tive.stages.select

    before = {name: (run / name).read_bytes() for name in ("manifest.jsonl", "tasks.json")}

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(tive.stages.select, "write_subset_from_input", crash)
    with pytest.raises(OSError):
        run_select(run, SelectOptions(budget="0.5", select_seed=9))
    assert {name: (run / name).read_bytes() for name in before} == before


def test_a_run_directory_inside_or_around_the_input_is_refused(small_data: Path, tmp_path: Path, capsys):
    images = str(small_data.parent / "images")
    # The input a datasets directory, the run directory inside it.
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "state.json").write_text("{}")
    for data, out in ((folder, folder / "run"), (folder, folder)):
        with pytest.raises(TiveError, match="must not be the input"):
            run_prepare(data, out, PrepareOptions(images=images))
    # An input named like a run-directory file, the run directory around it.
    data = tmp_path / "run" / "manifest.jsonl"
    data.parent.mkdir()
    shutil.copy(small_data, data)
    before = data.read_bytes()
    assert main(["prepare", str(data), "--out", str(data.parent), "--images", images, "--task-field", "dataset"]) == 2
    assert "must not be the input" in capsys.readouterr().err
    assert data.read_bytes() == before and sorted(p.name for p in data.parent.iterdir()) == ["manifest.jsonl"]


def test_run_needs_an_explicit_model(small_data: Path, tmp_path: Path, capsys):
    args = ["run", str(small_data), "--images", str(small_data.parent / "images"), "--out", str(tmp_path / "r")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "--model is required" in err and "--model tiny" in err and "Traceback" not in err


@pytest.mark.parametrize(("flag", "value"), [("--lora-rank", "0"), ("--learning-rate", "0"), ("--epochs", "0"),
                                              ("--lora-alpha", "0"), ("--batch-size", "0")])
def test_options_given_as_zero_are_refused_not_replaced_by_defaults(run: Path, flag: str, value: str, capsys):
    assert main(["warmup", str(run), "--model", "tiny", flag, value, "--force"]) == 2
    err = capsys.readouterr().err
    assert f"{flag} 0" in err and ("must be" in err)


def test_each_stage_closes_its_log_file(small_data: Path, tmp_path: Path):
    logger = logging.getLogger("tive")
    before = [h for h in logger.handlers if isinstance(h, logging.FileHandler)]
    for i in range(3):
        run_prepare(small_data, tmp_path / f"run{i}", small_options(small_data)[0])
    assert [h for h in logger.handlers if isinstance(h, logging.FileHandler)] == before
    assert "prepare:" in (tmp_path / "run0" / "tive.log").read_text()


def test_select_seed_help_says_what_it_seeds(capsys):
    with pytest.raises(SystemExit):
        main(["select", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--select-seed SELECT_SEED seed of the selection's random choices" in text
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--seed SEED seed of the warm-up sample" in text and "--select-seed SELECT_SEED" in text


def test_the_model_fingerprint_tells_fine_tunes_of_the_same_shape_apart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Large weight files are not hashed whole, but a same-sized file with other weights still differs."""
    import tive.model.loading as loading

    monkeypatch.setattr(loading, "_CONTENT_HASH_LIMIT", 4096)
    monkeypatch.setattr(loading, "_BLOCK_BYTES", 256)
    rng = np.random.default_rng(0)
    weights = rng.standard_normal(200_000).astype(np.float32)
    for name, values in (("a", weights), ("b", weights), ("c", weights + 1e-3)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text("{}")
        (tmp_path / name / "model.safetensors").write_bytes(values.tobytes())
    a, b, c = (loading.model_fingerprint(tmp_path / name) for name in "abc")
    assert a == b and a != c
