"""Assigning each record its task (the source dataset it came from).

TIVE values tasks and splits the budget between them, so every record needs one. Three ways, exactly one used:

- `task_field`: the record already says it, e.g. Visual-CoT's `"dataset": "gqa"`. The value must be a
  non-empty string (an integer is accepted and converted with `str`).
- `task_rules`: ordered rules over the record's image paths and first instruction, for files without such a
  field. Either a built-in rule set by name (`llava665k`, for the LLaVA-1.5 665K mix) or a YAML file.
- neither: every record forms the single task `all`.

Rules file format::

    rules:                            # ordered; the first rule that matches a record gives its task
      - task: sharegpt                # required: the task name
        has_image: false              # optional: whether the record has images
      - task: gqa
        image: '(^|/)gqa/'            # optional: regex, re.search'ed against each image path as written;
                                      #   matches when any of the record's paths matches
      - task: vqa
        instruction: 'single word'    # optional: regex, re.search'ed against the first user turn's text
                                      #   (image placeholders removed)
      - task: other                   # a rule with only `task` matches everything: a catch-all

A rule matches when all the conditions it gives match. A record that no rule matches is an error; end the list
with a catch-all rule to avoid that. Regexes use Python's `re` syntax; quote them in single quotes in YAML so
that backslashes stay as written; add `(?i)` for case-insensitive matching.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from tive.data.formats import Dataset
from tive.data.records import Record
from tive.errors import DataError, TiveError

DEFAULT_TASK = "all"

BUILTIN_RULES = ("llava665k",)

_RULE_KEYS = ("task", "image", "instruction", "has_image")


@dataclass(frozen=True)
class TaskRule:
    """One rule of a rules file; None means the condition is not used."""

    task: str
    image: re.Pattern[str] | None = None
    instruction: re.Pattern[str] | None = None
    has_image: bool | None = None

    def matches(self, record: Record) -> bool:
        """Whether every condition this rule gives holds for `record`."""
        if self.has_image is not None and bool(record.images) != self.has_image:
            return False
        if self.image is not None and not any(self.image.search(path) for path in record.images):
            return False
        if self.instruction is not None and not self.instruction.search(record.first_instruction()):
            return False
        return True


def assign_tasks(dataset: Dataset, task_field: str | None = None, task_rules: str | None = None) -> str:
    """Set `record.task` on every record of `dataset`.

    Args:
        dataset: the loaded input; its records are updated in place.
        task_field: name of a record field that holds the task.
        task_rules: a built-in rule set name (`llava665k`) or the path of a YAML rules file.

    Returns:
        A one-line message saying how tasks were assigned and how many there are, for the user.

    Raises:
        TiveError: both options given, or the rules file is missing or invalid (naming the rule number).
        DataError: a record lacks a usable task field, or no rule matches it.
    """
    if task_field is not None and task_rules is not None:
        raise TiveError("give either --task-field or --task-rules, not both")

    records = dataset.records
    if task_field is not None:
        for record in records:
            record.task = _task_from_field(dataset, record, task_field)
        return f"tasks from field {task_field!r}: {_count_tasks(records)}"

    if task_rules is not None:
        rules, source = load_task_rules(task_rules)
        for record in records:
            record.task = _task_from_rules(dataset, record, rules, source)
        return f"tasks from rules {source}: {_count_tasks(records)}"

    for record in records:
        record.task = DEFAULT_TASK
    return f"no --task-field or --task-rules: all {len(records)} records form one task {DEFAULT_TASK!r}"


def _count_tasks(records: list[Record]) -> str:
    """"N tasks" (or "1 task") for the message."""
    n_tasks = len({record.task for record in records})
    return f"{n_tasks} task" if n_tasks == 1 else f"{n_tasks} tasks"


def _task_from_field(dataset: Dataset, record: Record, task_field: str) -> str:
    """The task named by `record.raw[task_field]`."""
    raw = record.raw
    fields = ", ".join(repr(key) for key in raw)
    hint = f"every record needs a non-empty string {task_field!r}; this record's fields: {fields}"
    if task_field not in raw:
        raise DataError(
            dataset.path, record.index, record.record_id, task_field, f"the record has no {task_field!r}", hint
        )
    value = raw[task_field]
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str) or not value.strip():
        raise DataError(
            dataset.path,
            record.index,
            record.record_id,
            task_field,
            f"the task value {value!r} is not a non-empty string",
            hint,
        )
    return value


def _task_from_rules(dataset: Dataset, record: Record, rules: list[TaskRule], source: str) -> str:
    """The task of the first rule that matches `record`."""
    for rule in rules:
        if rule.matches(record):
            return rule.task
    images = ", ".join(repr(path) for path in record.images) or "none"
    instruction = record.first_instruction()
    if len(instruction) > 80:
        instruction = instruction[:77] + "..."
    raise DataError(
        dataset.path,
        record.index,
        record.record_id,
        "task",
        f"no rule of {source} matches the record (images: {images}; first instruction: {instruction!r})",
        "add a catch-all rule (a rule with only `task`) at the end of the rules",
    )


def load_task_rules(task_rules: str) -> tuple[list[TaskRule], str]:
    """Load a built-in rule set by name or a YAML rules file by path.

    Args:
        task_rules: `llava665k`, or a path to a rules file.

    Returns:
        The parsed rules, in order, and a short description of where they came from (for messages).

    Raises:
        TiveError: the file is missing, is not valid YAML, or a rule is invalid (naming the file and rule number).
    """
    if task_rules in BUILTIN_RULES:
        text = resources.files("tive.data").joinpath("rules", f"{task_rules}.yaml").read_text(encoding="utf-8")
        source = f"built-in {task_rules!r}"
    else:
        path = Path(task_rules)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise TiveError(
                f"{path}: task rules file not found (built-in rule sets: {', '.join(BUILTIN_RULES)})"
            ) from None
        except (OSError, UnicodeDecodeError) as err:
            raise TiveError(f"{path}: cannot read the task rules file: {err}") from None
        source = f"file {str(path)!r}"
    return parse_task_rules(text, source), source


def parse_task_rules(text: str, source: str) -> list[TaskRule]:
    """Parse and validate the YAML text of a rules file.

    Args:
        text: the YAML document.
        source: where it came from, used in error messages.

    Returns:
        The rules, in order.

    Raises:
        TiveError: invalid YAML, a missing or empty `rules` list, an unknown key, a missing or non-string
            `task`, an invalid regex or a non-boolean `has_image`; the message names the source and rule number.
    """
    import yaml

    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise TiveError(f"task rules {source}: not valid YAML: {err}") from None
    if not isinstance(document, dict) or "rules" not in document:
        raise TiveError(f"task rules {source}: expected a mapping with a 'rules' list (see `tive.data.tasks`)")
    unknown = sorted(str(key) for key in document if key != "rules")
    if unknown:
        raise TiveError(f"task rules {source}: unknown top-level key(s) {', '.join(unknown)}; only 'rules' is allowed")
    raw_rules = document["rules"]
    if not isinstance(raw_rules, list) or not raw_rules:
        raise TiveError(f"task rules {source}: 'rules' must be a non-empty list of rules")

    rules: list[TaskRule] = []
    for number, raw in enumerate(raw_rules, start=1):
        where = f"task rules {source}, rule {number}"
        if not isinstance(raw, dict):
            raise TiveError(f"{where}: a rule must be a mapping such as {{task: NAME, image: REGEX}}")
        unknown = sorted(str(key) for key in raw if key not in _RULE_KEYS)
        if unknown:
            raise TiveError(
                f"{where}: unknown key(s) {', '.join(unknown)}; allowed keys: {', '.join(_RULE_KEYS)}"
            )
        task = raw.get("task")
        if not isinstance(task, str) or not task.strip():
            raise TiveError(f"{where}: missing 'task' (every rule needs a non-empty task name)")
        has_image = raw.get("has_image")
        if has_image is not None and not isinstance(has_image, bool):
            raise TiveError(f"{where}: 'has_image' must be true or false, got {has_image!r}")
        rules.append(
            TaskRule(
                task=task,
                image=_compile(raw.get("image"), "image", where),
                instruction=_compile(raw.get("instruction"), "instruction", where),
                has_image=has_image,
            )
        )
    return rules


def _compile(pattern: Any, key: str, where: str) -> re.Pattern[str] | None:
    """Compile a rule's regex, or None when the rule does not use `key`."""
    if pattern is None:
        return None
    if not isinstance(pattern, str):
        raise TiveError(f"{where}: {key!r} must be a regex string, got {pattern!r}")
    try:
        return re.compile(pattern)
    except re.error as err:
        raise TiveError(f"{where}: invalid {key!r} regex {pattern!r}: {err}") from None
