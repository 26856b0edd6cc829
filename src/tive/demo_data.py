"""An offline generator of a small multi-task visual-instruction dataset in LLaVA format.

`tive demo` runs the whole selection pipeline on this data with the built-in tiny model, so the data has to be
made without network access, in seconds, and look like a real instruction mix in miniature: several tasks
with different answer formats, imbalanced sizes, different difficulty and some redundancy (the `color` task
reuses a few images many times with paraphrased questions, the way real mixes repeat near-duplicates).

Images are simple 64x64 RGB drawings (the tiny model's vision tower resizes them to 32x32). Every task is a
`TaskSpec` in `DEMO_TASKS`; a task's `make` function returns `Example`s that carry the image, the turns and the
ground truth the answers were made from, so tests can check answers against the drawing.

Output is fully determined by the seed: each task draws from its own generator seeded by (seed, task name), so
adding a task leaves the others' records unchanged (only the shuffled order of the records changes).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image, ImageDraw

from tive.synthetic import Example, font, named_rng, split_by_weight, to_records, write_records_json

IMAGE_SIZE = 64

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 60, 220),
    "yellow": (235, 205, 20),
    "purple": (140, 40, 170),
    "orange": (245, 130, 20),
}
SHAPES = ("circle", "square", "triangle", "diamond", "cross")
# Light backgrounds, far from every shape colour, so a pixel's colour tells shape from background.
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (255, 255, 255),
    "light gray": (225, 225, 225),
    "cream": (250, 240, 215),
}
LETTERS = "ABCDE"

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels, inclusive of x0/y0, exclusive of x1/y1


@dataclass(frozen=True)
class Shape:
    """One drawn shape: its kind, colour name and pixel box."""

    kind: str
    color: str
    box: Box


@dataclass(frozen=True)
class TaskSpec:
    """One task of the generated mix.

    Attributes:
        name: the task name, written as each record's `dataset` and used in ids and image folders.
        weight: the task's share of the records (weights are normalised over the task list).
        make: `make(rng, n)` returns exactly `n` examples drawn from `rng`.
    """

    name: str
    weight: float
    make: Callable[[np.random.Generator, int], list[Example]]


# --------------------------------------------------------------------------------------------------- drawing


def _canvas(background: str = "white") -> Image.Image:
    return Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), BACKGROUNDS[background])


def _draw_shape(draw: ImageDraw.ImageDraw, shape: Shape) -> None:
    x0, y0, x1, y1 = shape.box
    fill = COLORS[shape.color]
    # PIL's rectangle/ellipse boxes are inclusive of the far edge; the Box convention is exclusive.
    xr, yr = x1 - 1, y1 - 1
    cx, cy = (x0 + xr) / 2, (y0 + yr) / 2
    if shape.kind == "circle":
        draw.ellipse((x0, y0, xr, yr), fill=fill)
    elif shape.kind == "square":
        draw.rectangle((x0, y0, xr, yr), fill=fill)
    elif shape.kind == "triangle":
        draw.polygon([(cx, y0), (xr, yr), (x0, yr)], fill=fill)
    elif shape.kind == "diamond":
        draw.polygon([(cx, y0), (xr, cy), (cx, yr), (x0, cy)], fill=fill)
    elif shape.kind == "cross":
        w, h = x1 - x0, y1 - y0
        draw.rectangle((x0 + w // 3, y0, x1 - w // 3 - 1, yr), fill=fill)
        draw.rectangle((x0, y0 + h // 3, xr, y1 - h // 3 - 1), fill=fill)
    else:
        raise ValueError(f"unknown shape kind {shape.kind!r}")


def draw_scene(shapes: list[Shape], background: str = "white") -> Image.Image:
    """Draws shapes on a 64x64 background, in order (later shapes on top)."""
    image = _canvas(background)
    draw = ImageDraw.Draw(image)
    for shape in shapes:
        _draw_shape(draw, shape)
    return image


def _choice(rng: np.random.Generator, items: Any) -> Any:
    items = list(items)
    return items[int(rng.integers(len(items)))]


def _sample(rng: np.random.Generator, items: Any, k: int) -> list[Any]:
    items = list(items)
    return [items[i] for i in rng.choice(len(items), size=k, replace=False)]


def _grid_boxes(rng: np.random.Generator, k: int, cells: int, margin: int, min_size: int, max_size: int) -> list[Box]:
    """Boxes in k distinct cells of a cells x cells grid, so shapes never overlap."""
    cell = IMAGE_SIZE // cells
    boxes = []
    for index in rng.choice(cells * cells, size=k, replace=False):
        row, col = divmod(int(index), cells)
        size = int(rng.integers(min_size, min(max_size, cell - 2 * margin) + 1))
        slack = cell - 2 * margin - size
        x0 = col * cell + margin + int(rng.integers(0, slack + 1))
        y0 = row * cell + margin + int(rng.integers(0, slack + 1))
        boxes.append((x0, y0, x0 + size, y0 + size))
    return boxes


def _plural(kind: str) -> str:
    return kind + "es" if kind.endswith("s") else kind + "s"


def _position(box: Box) -> str:
    """The box centre's place in a 3x3 grid, in words."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    third = IMAGE_SIZE / 3
    row = ("top", "middle", "bottom")[min(int(cy // third), 2)]
    col = ("left", "center", "right")[min(int(cx // third), 2)]
    if row == "middle" and col == "center":
        return "center"
    if row == "middle":
        return f"middle {col}"
    if col == "center":
        return f"{row} center"
    return f"{row} {col}"


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _box_answer(box: Box) -> str:
    return "[" + ", ".join(f"{v / IMAGE_SIZE:.2f}" for v in box) + "]"


# ----------------------------------------------------------------------------------------------------- tasks


COLOR_QUESTIONS = (
    "What color is the shape?",
    "What is the color of the shape in the image?",
    "Which color does the object have?",
    "Name the color of the shape.",
    "What colour is the object shown?",
    "Tell me the color of the figure.",
    "What color is the shape? Answer with one word.",
)
SHAPE_QUESTIONS = ("What shape is it?", "And what kind of shape is it?", "Which shape is drawn?")


def make_color(rng: np.random.Generator, n: int) -> list[Example]:
    """One big shape; asks its colour. Few distinct images, each reused with paraphrased questions."""
    pool_size = max(1, min(24, n // 10))
    pool = []
    for i in range(pool_size):
        shape = Shape(_choice(rng, SHAPES), _choice(rng, COLORS), _grid_boxes(rng, 1, 1, 8, 36, 48)[0])
        pool.append((f"img{i:03d}", shape, draw_scene([shape])))
    examples = []
    for _ in range(n):
        key, shape, image = pool[int(rng.integers(pool_size))]
        turns = [(_choice(rng, COLOR_QUESTIONS), shape.color)]
        if rng.random() < 0.3:
            turns.append((_choice(rng, SHAPE_QUESTIONS), shape.kind))
        examples.append(Example(turns, image, key, {"shapes": [shape]}))
    return examples


def make_count(rng: np.random.Generator, n: int) -> list[Example]:
    """1-6 small shapes of one kind among 0-3 distractors of other kinds; asks how many of the kind there are."""
    examples = []
    for i in range(n):
        target = _choice(rng, SHAPES)
        count = int(rng.integers(1, 7))
        n_other = int(rng.integers(0, 4))
        boxes = _grid_boxes(rng, count + n_other, 4, 2, 9, 12)
        others = [k for k in SHAPES if k != target]
        kinds = [target] * count + [_choice(rng, others) for _ in range(n_other)]
        shapes = [Shape(kind, _choice(rng, COLORS), box) for kind, box in zip(kinds, boxes)]
        background = _choice(rng, BACKGROUNDS)
        question = _choice(
            rng,
            (
                f"How many {_plural(target)} are there?",
                f"Count the {_plural(target)} in the image.",
                f"How many {_plural(target)} can you see? Answer with a number.",
            ),
        )
        truth = {"shapes": shapes, "target": target, "count": count, "background": background}
        examples.append(Example([(question, str(count))], draw_scene(shapes, background), f"{i:05d}", truth))
    return examples


def make_digits(rng: np.random.Generator, n: int) -> list[Example]:
    """A digit 0-9 with random size, offset and colour; asks which digit it is."""
    examples = []
    for i in range(n):
        digit = int(rng.integers(10))
        color = _choice(rng, COLORS)
        background = _choice(rng, BACKGROUNDS)
        image = _canvas(background)
        draw = ImageDraw.Draw(image)
        glyphs = font(int(rng.integers(30, 47)))
        left, top, right, bottom = draw.textbbox((0, 0), str(digit), font=glyphs)
        x = (IMAGE_SIZE - (right - left)) / 2 - left + int(rng.integers(-6, 7))
        y = (IMAGE_SIZE - (bottom - top)) / 2 - top + int(rng.integers(-6, 7))
        draw.text((x, y), str(digit), fill=COLORS[color], font=glyphs)
        question = _choice(
            rng, ("What digit is shown?", "Which number is written in the image?", "Read the digit in the picture.")
        )
        truth = {"digit": digit, "color": color, "background": background}
        examples.append(Example([(question, str(digit))], image, f"{i:05d}", truth))
    return examples


def make_choice(rng: np.random.Generator, n: int) -> list[Example]:
    """One shape; multiple choice over 3-4 shuffled shape names, answered with the option's letter."""
    examples = []
    for i in range(n):
        shape = Shape(_choice(rng, SHAPES), _choice(rng, COLORS), _grid_boxes(rng, 1, 1, 10, 26, 44)[0])
        n_options = int(rng.integers(3, 5))
        options = [shape.kind] + _sample(rng, [k for k in SHAPES if k != shape.kind], n_options - 1)
        options = _sample(rng, options, n_options)
        letter = LETTERS[options.index(shape.kind)]
        lines = "\n".join(f"{LETTERS[j]}. {option}" for j, option in enumerate(options))
        question = (
            f"Which shape is in the image?\n{lines}\nAnswer with the option's letter from the given choices directly."
        )
        truth = {"shapes": [shape], "options": options}
        examples.append(Example([(question, letter)], draw_scene([shape]), f"{i:05d}", truth))
    return examples


def make_box(rng: np.random.Generator, n: int) -> list[Example]:
    """A target shape and 1-2 distractors of other colours; asks the target's normalised bounding box."""
    examples = []
    for i in range(n):
        n_shapes = int(rng.integers(2, 4))
        boxes = _grid_boxes(rng, n_shapes, 2, 2, 12, 26)
        colors = _sample(rng, COLORS, n_shapes)
        shapes = [Shape(_choice(rng, SHAPES), color, box) for color, box in zip(colors, boxes)]
        target = shapes[0]
        question = (
            "Please provide the bounding box coordinate of the region this sentence describes: "
            f"the {target.color} {target.kind}."
        )
        truth = {"shapes": shapes, "target": target}
        examples.append(Example([(question, _box_answer(target.box))], draw_scene(shapes), f"{i:05d}", truth))
    return examples


CAPTION_QUESTIONS = (
    "Describe the image briefly.",
    "Give a short description of the picture.",
    "What does the image show?",
)


def make_caption(rng: np.random.Generator, n: int) -> list[Example]:
    """1-3 shapes in distinct cells of a 3x3 grid; a templated sentence naming each shape, colour and place."""
    examples = []
    for i in range(n):
        n_shapes = int(rng.integers(1, 4))
        boxes = _grid_boxes(rng, n_shapes, 3, 2, 10, 17)
        shapes = [Shape(_choice(rng, SHAPES), _choice(rng, COLORS), box) for box in boxes]
        background = _choice(rng, BACKGROUNDS)
        phrases = [
            f"{_article(s.color)} {s.color} {s.kind} "
            + ("in the center" if _position(s.box) == "center" else f"at the {_position(s.box)}")
            for s in shapes
        ]
        if len(phrases) == 1:
            listed = phrases[0]
        else:
            listed = ", ".join(phrases[:-1]) + " and " + phrases[-1]
        count_word = ("One shape", "Two shapes", "Three shapes")[n_shapes - 1]
        answer = f"{count_word} on a {background} background: {listed}."
        question = _choice(rng, CAPTION_QUESTIONS)
        truth = {"shapes": shapes, "background": background}
        examples.append(Example([(question, answer)], draw_scene(shapes, background), f"{i:05d}", truth))
    return examples


OPPOSITES = {"hot": "cold", "big": "small", "up": "down", "fast": "slow", "light": "dark", "old": "new"}
PLURALS = {"cat": "cats", "box": "boxes", "mouse": "mice", "child": "children", "leaf": "leaves", "bus": "buses"}


def make_chat(rng: np.random.Generator, n: int) -> list[Example]:
    """Text-only, two rounds: arithmetic with a follow-up, or word questions."""
    examples = []
    for _ in range(n):
        if rng.random() < 0.6:
            a, b, m = int(rng.integers(1, 10)), int(rng.integers(1, 10)), int(rng.integers(2, 4))
            turns = [(f"What is {a} plus {b}?", str(a + b)), (f"And what is that times {m}?", str((a + b) * m))]
            truth = {"kind": "arithmetic", "a": a, "b": b, "m": m}
        else:
            word = _choice(rng, OPPOSITES)
            noun = _choice(rng, PLURALS)
            turns = [
                (f"What is the opposite of {word}?", OPPOSITES[word]),
                (f"What is the plural of {noun}?", PLURALS[noun]),
            ]
            truth = {"kind": "words", "word": word, "noun": noun}
        examples.append(Example(turns, truth=truth))
    return examples


DEMO_TASKS: list[TaskSpec] = [
    TaskSpec("color", 0.28, make_color),
    TaskSpec("count", 0.16, make_count),
    TaskSpec("digits", 0.12, make_digits),
    TaskSpec("choice", 0.12, make_choice),
    TaskSpec("box", 0.10, make_box),
    TaskSpec("caption", 0.10, make_caption),
    TaskSpec("chat", 0.12, make_chat),
]


# ---------------------------------------------------------------------------------------------------- writer


def task_sizes(tasks: list[TaskSpec], n_records: int) -> dict[str, int]:
    """Splits n_records over the tasks by weight (largest remainder, ties by name); sums exactly."""
    return split_by_weight({t.name: t.weight for t in tasks}, n_records)


def task_rng(seed: int, name: str) -> np.random.Generator:
    """The task's own generator: depends on the seed and the task name only."""
    return named_rng(seed, name)


def make_demo_dataset(
    out_dir: Path | str, n_records: int = 1200, seed: int = 0, tasks: list[TaskSpec] | None = None
) -> Path:
    """Writes the demo dataset: `out_dir/images/<task>/<name>.png` and `out_dir/demo.json`.

    Records are LLaVA-style (`id`, `dataset`, `image` relative to `out_dir/images`, `conversations`), shuffled
    across tasks. The `<image>` placeholder goes before the question in most records and after it in the rest.
    The same seed gives byte-identical files. demo.json is written last, so its presence means the images are
    complete.

    Args:
        out_dir: the folder to write into (created if missing).
        n_records: the number of records, split over the tasks by weight.
        seed: the seed of every random choice.
        tasks: the task list; DEMO_TASKS when None.

    Returns:
        The path of demo.json.
    """
    if n_records < 1:
        raise ValueError(f"n_records must be at least 1, got {n_records}")
    tasks = DEMO_TASKS if tasks is None else tasks
    out_dir = Path(out_dir)
    image_root = out_dir / "images"
    sizes = task_sizes(tasks, n_records)
    records: list[dict[str, Any]] = []
    for task in tasks:
        n_task = sizes[task.name]
        if n_task == 0:
            continue
        examples = task.make(task_rng(seed, task.name), n_task)
        if len(examples) != n_task:
            raise ValueError(f"task {task.name!r} made {len(examples)} examples, asked for {n_task}")
        records += to_records(examples, task.name, image_root, task=task.name,
                              placement=task_rng(seed, task.name + "/placement"), image_before=0.75)
    order = np.random.default_rng([seed, zlib.crc32(b"order")]).permutation(len(records))
    records = [records[int(i)] for i in order]
    json_path = out_dir / "demo.json"
    write_records_json(json_path, records)
    return json_path
