"""Fixtures of the architecture tests: tiny checkpoints (built once per session), records and a small dataset."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from PIL import Image

from tests.models.builders import ARCHITECTURES, Architecture
from tive.data.formats import parse_llava_record
from tive.data.records import Record


def architecture_params() -> list:
    """One pytest param per architecture, skipped (with the reason) where an optional package is missing."""
    params = []
    for name, arch in ARCHITECTURES.items():
        missing = [package for package in arch.needs if importlib.util.find_spec(package) is None]
        marks = [
            pytest.mark.skip(reason=f"{name}: its processor needs the {', '.join(missing)} package (pip install "
                             f"{' '.join(missing)}); transformers' SmolVLMProcessor refuses to start without it")
        ] if missing else []
        params.append(pytest.param(name, marks=marks, id=name))
    return params


class Checkpoints:
    """Builds each architecture's tiny checkpoint on first use and keeps it for the session."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.dirs: dict[str, Path] = {}

    def __call__(self, name: str) -> Path:
        if name not in self.dirs:
            self.dirs[name] = ARCHITECTURES[name].build(self.root / name, 0)
        return self.dirs[name]

    @staticmethod
    def arch(name: str) -> Architecture:
        return ARCHITECTURES[name]


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Checkpoints:
    return Checkpoints(tmp_path_factory.mktemp("checkpoints"))


@pytest.fixture(scope="session")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A square and a wide image: image-size-dependent processors expand them to different token counts."""
    root = tmp_path_factory.mktemp("images")
    paths = {"square": root / "square.png", "wide": root / "wide.png"}
    Image.new("RGB", (64, 64), (200, 10, 10)).save(paths["square"])
    Image.new("RGB", (96, 64), (10, 160, 30)).save(paths["wide"])
    return paths


def make_record(conversations: list[dict[str, str]], image_paths: list[Path] = ()) -> Record:
    raw = {"id": "r", "conversations": conversations}
    if image_paths:
        raw["image"] = [path.name for path in image_paths]
    record = parse_llava_record(raw, 0, Path("data.json"))
    record.image_paths = list(image_paths)
    return record


def conversation(*turns: str) -> list[dict[str, str]]:
    """LLaVA turns from alternating human / gpt texts."""
    return [{"from": "human" if i % 2 == 0 else "gpt", "value": text} for i, text in enumerate(turns)]


@pytest.fixture(scope="session")
def records(images: dict[str, Path]) -> dict[str, tuple[Record, list[str]]]:
    """The label test cases: name -> (record, its answers in order)."""
    square, wide = images["square"], images["wide"]
    cases = {
        "single_image": (conversation("<image>\nWhat color is the shape?", "red"), [square]),
        "image_in_later_turn": (
            conversation("Describe it.", "blue", "<image>\nWhat color?", "It is red.", "And now?<image>", "green"),
            [square, wide],
        ),
        "multi_image": (conversation("<image><image>\nCompare both images.", "They differ."), [square, wide]),
        "text_only": (conversation("How many circles are there?", "3"), []),
    }
    return {
        name: (make_record(turns, paths), [t["value"] for t in turns if t["from"] == "gpt"])
        for name, (turns, paths) in cases.items()
    }


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 40-record multi-task dataset with images (the demo generator)."""
    from tive.demo_data import make_demo_dataset

    return make_demo_dataset(tmp_path_factory.mktemp("demo40"), n_records=40, seed=4)
