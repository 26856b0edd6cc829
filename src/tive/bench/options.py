"""The flags of `tive bench`, generated from the bench's dataclasses, so that every default is declared once.

A dataclass field declared with `tive.config.opt(default, help, **extra)` gets a flag (a field declared without
it gets none); `extra` may hold:

    flag               the flag's name (default: --field-name); its argparse dest is the flag without dashes
    aliases            other names of the same flag (kept for older command lines)
    choices, action    as in argparse (action: store_true, or extend with nargs)
    nargs, metavar, required
    parse              text -> value, for a field whose flag is not a plain int/float/str (budgets: "0.05,0.15")
    min, max           inclusive bounds; above, below: exclusive bounds (each element of a tuple is checked)

Every flag's argparse default is None (False for store_true): `given` returns only what the user typed, so the
dataclass default applies otherwise and `--quick`'s values sit between the two. `check_fields` (called from each
dataclass's __post_init__) refuses a value out of bounds with a TiveError naming the flag, whether it came from
the command line or from code.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any, get_type_hints

from tive.errors import TiveError


def flagged_fields(cls: type) -> list[dataclasses.Field]:
    """The fields of `cls` that have a flag (declared with `opt`)."""
    return [f for f in dataclasses.fields(cls) if "help" in f.metadata]


def flag_of(cls: type, name: str) -> str:
    """The flag of field `name` of `cls` (e.g. `--warmup-lora-rank`)."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            return f.metadata.get("flag", "--" + f.name.replace("_", "-"))
    raise KeyError(name)


def _dest(f: dataclasses.Field) -> str:
    return f.metadata.get("flag", "--" + f.name.replace("_", "-")).lstrip("-").replace("-", "_")


def default_of(cls: type, name: str) -> Any:
    """The declared default of field `name` of `cls` (a class's default, not an instance's value)."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return f.default
            if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
                return f.default_factory()  # type: ignore[misc]
            raise TiveError(f"{cls.__name__}.{name} has no default")
    raise KeyError(name)


def show(value: Any) -> str:
    """A value as the user would type it: tuples comma-separated, floats without trailing zeros."""
    if isinstance(value, (tuple, list)):
        return ",".join(show(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _scalar(hint: Any) -> type:
    for candidate in (int, float, str):
        if hint is candidate or candidate in getattr(hint, "__args__", ()):
            return candidate
    return str


def add_fields(group: Any, cls: type, quick: dict[str, Any] | None = None) -> None:
    """Add one flag per flagged field of `cls` to `group` (a parser or argument group)."""
    hints = get_type_hints(cls)
    for f in flagged_fields(cls):
        meta = f.metadata
        flag = meta.get("flag", "--" + f.name.replace("_", "-"))
        kwargs: dict[str, Any] = {"dest": _dest(f)}
        help_text = meta["help"]
        action = meta.get("action")
        if action == "store_true":
            kwargs.update(action="store_true", default=False)
        else:
            kwargs["default"] = None
            # A `parse`d flag stays text here: `given` parses it, so its errors are TiveErrors like the rest.
            kwargs["type"] = str if "parse" in meta else _scalar(hints[f.name])
            if action is not None:
                kwargs["action"] = action
            for key in ("choices", "nargs", "metavar"):
                if key in meta:
                    kwargs[key] = meta[key]
            default = default_of(cls, f.name)
            notes = []
            if default is not None and default != [] and not meta.get("required"):
                notes.append(f"default: {show(default)}")
            if quick and f.name in quick:
                notes.append(f"--quick: {show(quick[f.name])}")
            if notes:
                help_text += " (" + "; ".join(notes) + ")"
        if meta.get("required"):
            kwargs["required"] = True
        kwargs["help"] = help_text.replace("%", "%%")
        group.add_argument(flag, *meta.get("aliases", ()), **kwargs)


def given(cls: type, args: argparse.Namespace) -> dict[str, Any]:
    """The values of `cls`'s flags that the user gave (field name -> value); absent flags are left out."""
    out = {}
    for f in flagged_fields(cls):
        value = getattr(args, _dest(f), None)
        if value is None or (f.metadata.get("action") == "store_true" and value is False):
            continue
        out[f.name] = f.metadata["parse"](value) if "parse" in f.metadata else value
    return out


def check_fields(obj: Any) -> None:
    """Refuse field values outside their declared bounds, naming the flag (None means "not set" and passes)."""
    for f in dataclasses.fields(obj):
        meta = f.metadata
        value = getattr(obj, f.name)
        if value is None:
            continue
        flag = meta.get("flag", "--" + f.name.replace("_", "-"))
        values = value if isinstance(value, (tuple, list)) else (value,)
        for v in values:
            if not isinstance(v, (int, float)) or isinstance(v, bool):
                continue
            problem = None
            if "min" in meta and v < meta["min"]:
                problem = f"must be at least {show(meta['min'])}"
            elif "above" in meta and v <= meta["above"]:
                problem = f"must be greater than {show(meta['above'])}"
            elif "max" in meta and v > meta["max"]:
                problem = f"must be at most {show(meta['max'])}"
            elif "below" in meta and v >= meta["below"]:
                problem = f"must be less than {show(meta['below'])}"
            if problem:
                shown = show(value)
                raise TiveError(f"{flag} {shown}: {problem}" + (f" (got {show(v)})" if shown != show(v) else ""))
        if "choices" in meta and not isinstance(value, (tuple, list)) and value not in meta["choices"]:
            raise TiveError(f"{flag} {value}: choose one of {', '.join(map(str, meta['choices']))}")
