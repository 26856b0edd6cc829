"""Records read on demand (issue 20, item 9): the later stages read only the records they need through prepare's
record index, so that a rank's memory does not grow with the dataset."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from tive.cli import main
from tive.rundir import RECORDS_INDEX, candidate_rows, load_prepared, read_manifest

FILLER = ("Describe the picture in detail, naming every object you can see and where it is in the frame. " * 6)


def _record(i: int, text: str = "") -> dict:
    return {"id": f"r{i}", "dataset": f"task{i % 3}",
            "conversations": [{"from": "human", "value": f"Question {i} {text}"},
                              {"from": "gpt", "value": f"Answer {i}: {FILLER}"}]}


def _prepare(data: Path, run: Path) -> Path:
    assert main(["prepare", str(data), "--out", str(run), "--task-field", "dataset"]) == 0
    return run


def _same(lazy_record, loaded_record) -> None:
    assert lazy_record.index == loaded_record.index
    assert lazy_record.record_id == loaded_record.record_id
    assert lazy_record.raw == loaded_record.raw
    assert lazy_record.turns == loaded_record.turns
    assert lazy_record.task == loaded_record.task
    assert lazy_record.status == loaded_record.status
    assert lazy_record.image_paths == loaded_record.image_paths


@pytest.mark.parametrize("kind", ["json", "jsonl", "parquet"])
def test_lazy_records_are_the_loaded_records(tmp_path: Path, kind: str) -> None:
    """Byte offsets survive non-ASCII text, a byte-order mark, CRLF line ends, blank lines and pretty-printing."""
    records = [_record(i, "naïve café ☕ \u2028 日本語" if i % 2 else "plain") for i in range(12)]
    data = tmp_path / f"data.{kind}"
    if kind == "json":
        data.write_bytes(b"\xef\xbb\xbf" + json.dumps(records, ensure_ascii=False, indent=2).encode("utf-8"))
    elif kind == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(records), data)
    else:
        lines = [json.dumps(r, ensure_ascii=False) for r in records]
        lines.insert(3, "   ")
        data.write_bytes(b"\xef\xbb\xbf" + ("\r\n".join(lines) + "\n\n").encode("utf-8"))
    run = _prepare(data, tmp_path / "run")
    assert (run / RECORDS_INDEX).is_file() == (kind != "parquet")  # Parquet records are rows: no index
    loaded, _ = load_prepared(run)
    lazy, _ = load_prepared(run, lazy=True)
    assert len(lazy.records) == len(loaded.records) == 12
    for lazy_record, loaded_record in zip(lazy.records, loaded.records):
        _same(lazy_record, loaded_record)
    view = lazy.records.take([7, 2])
    assert [r.index for r in view] == [7, 2]
    # A DataLoader worker gets the view pickled: it reopens the file itself.
    again = pickle.loads(pickle.dumps(view))
    _same(again[0], loaded.records[7])


def test_run_prepared_before_the_index_gets_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data.json"
    data.write_text(json.dumps([_record(i) for i in range(5)]))
    run = _prepare(data, tmp_path / "run")
    (run / RECORDS_INDEX).unlink()
    capsys.readouterr()
    lazy, _ = load_prepared(run, lazy=True)
    assert "indexing the input's records once" in capsys.readouterr().out
    assert (run / RECORDS_INDEX).is_file()
    assert [r.record_id for r in lazy.records] == [f"r{i}" for i in range(5)]
    load_prepared(run, lazy=True)
    assert "indexing" not in capsys.readouterr().out  # once


_CHUNK_OF_A_RANK = """
import sys
from pathlib import Path
from tive.rundir import candidate_rows, load_prepared, read_manifest
run = Path(sys.argv[1])
rows = candidate_rows(read_manifest(run))
dataset, _ = load_prepared(run, lazy=True, rows=rows)
chunk = [record.turns for record in dataset.records.take([row["index"] for row in rows[:256]])]
# VmHWM: this process's peak resident memory (ru_maxrss would carry the parent's over fork and exec)
print(next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:")))
"""


def test_a_rank_holds_the_manifest_not_the_records(tmp_path: Path) -> None:
    """What a features rank holds for one chunk, at 2,000 and 12,000 records of ~1.4 KB: the growth per record
    is the manifest's, not the records' (8-10 KB each when the whole input was parsed and kept)."""
    peaks = {}
    for n in (2_000, 12_000):
        data = tmp_path / f"data{n}.json"
        with open(data, "w") as handle:
            handle.write("[" + ",\n".join(json.dumps(_record(i) | {"extra": FILLER}) for i in range(n)) + "]")
        run = _prepare(data, tmp_path / f"run{n}")
        out = subprocess.run([sys.executable, "-c", _CHUNK_OF_A_RANK, str(run)], capture_output=True, text=True,
                             check=True).stdout
        peaks[n] = int(out.split()[-1]) * 1024  # kB
    per_record = (peaks[12_000] - peaks[2_000]) / 10_000
    print(f"{per_record:.0f} bytes a record")
    # 500 MB over 655K more records (the target at the real mix's size, manifest included) is ~760 bytes a record
    assert per_record < 750, f"{per_record:.0f} bytes held per record"
