"""`tive bench`'s flags: generated from the bench's dataclasses (one declaration per default), checked, --quick."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest

from tive.bench.cli import resolve
from tive.bench.model import BaseSettings, Recipe
from tive.bench.options import default_of, flag_of, flagged_fields, show
from tive.bench.runner import QUICK, Plan, SelectionSettings
from tive.bench.world import WorldSizes
from tive.cli import build_parser, main
from tive.config import FeaturesOptions, WarmupOptions
from tive.errors import TiveError
from tive.select import DEFAULT_METHOD, DEFAULT_TEMPERATURE


def _args(*flags: str) -> argparse.Namespace:
    return build_parser().parse_args(["bench", "--out", "o", *flags])


def _bench_parser() -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["bench"]


def test_eval_takes_several_files_after_one_flag_or_repeated() -> None:
    assert _args("--eval", "a.json", "b.json").eval == ["a.json", "b.json"]
    assert _args("--eval", "a.json", "--eval", "b.json", "c.json").eval == ["a.json", "b.json", "c.json"]
    config = resolve(_args("--train", "t.json", "--eval", "a.json", "b.json"))
    assert config.inputs.evals == [Path("a.json"), Path("b.json")]


def test_defaults_come_from_the_dataclasses_once() -> None:
    config = resolve(_args())
    assert config.sizes == WorldSizes()  # one source of the world's default size
    assert config.plan == Plan()
    assert config.plan.recipe == Recipe()
    assert config.base == BaseSettings(seed=0)
    assert config.selection == SelectionSettings()
    # The TIVE settings the bench shares with the pipeline are read from the pipeline's declarations.
    assert SelectionSettings().proj_dim == next(f.default for f in dataclasses.fields(FeaturesOptions)
                                                if f.name == "proj_dim")
    assert SelectionSettings().warmup_fraction == next(f.default for f in dataclasses.fields(WarmupOptions)
                                                       if f.name == "warmup_fraction")
    assert SelectionSettings().temperature == DEFAULT_TEMPERATURE
    assert SelectionSettings().choose == DEFAULT_METHOD


def test_every_flag_is_a_field_and_shows_its_default() -> None:
    from tive.bench.cli import _classes

    actions = {flag: action for action in _bench_parser()._actions for flag in action.option_strings}
    declared = set()
    for cls, _ in _classes():
        for f in flagged_fields(cls):
            flag = flag_of(cls, f.name)
            declared.add(flag)
            declared.update(f.metadata.get("aliases", ()))
            action = actions[flag]
            assert action.default in (None, False), flag  # the dataclass default applies, not argparse's
            default = default_of(cls, f.name)
            if default not in (None, [], False) and not f.metadata.get("required"):
                assert f"default: {show(default)}" in action.help, flag
    assert set(actions) - {"-h", "--help"} == declared  # no hand-written flag restating a default


def test_quick_sits_between_the_defaults_and_the_flags() -> None:
    quick = resolve(_args("--quick"))
    assert quick.plan.recipe.steps == QUICK[Recipe]["steps"] != Recipe().steps
    assert quick.plan.budgets == QUICK[Plan]["budgets"] and quick.plan.seeds == QUICK[Plan]["seeds"]
    assert quick.sizes == WorldSizes(**QUICK[WorldSizes])
    assert quick.base.vision_steps == QUICK[BaseSettings]["vision_steps"]
    given = resolve(_args("--quick", "--steps", "50", "--seeds", "2", "--records", "500"))
    assert (given.plan.recipe.steps, given.plan.seeds, given.sizes.train) == (50, 2, 500)
    assert given.plan.budgets == QUICK[Plan]["budgets"]


def test_ablation_budget_follows_the_budgets() -> None:
    assert resolve(_args("--budgets", "0.3,0.1")).plan.ablation_budget == 0.1  # the nearest to 15%
    assert resolve(_args("--budgets", "0.1,0.2", "--ablation-budget", "0.2")).plan.ablation_budget == 0.2
    with pytest.raises(TiveError, match="--ablation-budget 0.2: not one of the budgets"):
        resolve(_args("--budgets", "0.1,0.3", "--ablation-budget", "0.2"))
    with pytest.raises(TiveError, match="--methods .*unknown method 'best'"):
        resolve(_args("--methods", "el2n,best"))
    assert resolve(_args("--methods", "el2n,length")).plan.ablations == ("el2n", "length")
    assert resolve(_args("--ablations", "el2n")).plan.ablations == ("el2n",)  # the older name of --methods


def test_worlds_default_to_clean_and_mixed_and_one_kind_runs_alone() -> None:
    assert resolve(_args()).worlds == ("clean", "mixed")
    assert resolve(_args("--world", "trap")).worlds == ("trap",)
    assert resolve(_args("--world", "wrong, size")).worlds == ("wrong", "size")


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--workers", "0"], "--workers 0"),
        (["--seeds", "0"], "--seeds 0"),
        (["--steps", "0"], "--steps 0"),
        (["--recipes", "steps,days"], "--recipes steps,days"),
        (["--batch-size", "0"], "--batch-size 0"),
        (["--learning-rate", "0"], "--learning-rate 0"),
        (["--budgets", "0,0.1"], "--budgets 0,0.1"),
        (["--budgets", "0.1,1.5"], "--budgets 0.1,1.5"),
        (["--budgets", "0.1,abc"], "--budgets 0.1,abc"),
        (["--ablation-budget", "0"], "--ablation-budget 0"),
        (["--records", "0"], "--records 0"),
        (["--eval-records", "0"], "--eval-records 0"),
        (["--world-seed", "-1"], "--world-seed -1"),
        (["--proj-dim", "0"], "--proj-dim 0"),
        (["--warmup-fraction", "0"], "--warmup-fraction 0"),
        (["--warmup-fraction", "1.5"], "--warmup-fraction 1.5"),
        (["--warmup-lora-rank", "0"], "--warmup-lora-rank 0"),
        (["--warmup-epochs", "0"], "--warmup-epochs 0"),
        (["--temperature", "0"], "--temperature 0"),
        (["--temperature", "-0.5"], "--temperature -0.5"),
        (["--base-batch-size", "0"], "--base-batch-size 0"),
        (["--train", "t.json", "--eval", "e.json", "--records", "500"], "--records"),
        (["--eval", "e.json"], "go with --train"),
        (["--world", "dirty"], "--world dirty: choose from clean"),
        (["--world", "clean,clean"], "named twice"),
        (["--world", ""], "--world : choose from"),
        (["--train", "t.json", "--eval", "e.json", "--world", "clean"], "--world: choose or size the built-in"),
        (["--train", "t.json"], "at least one --eval"),
    ],
)
def test_bad_values_are_refused_naming_the_flag(flags: list[str], named: str, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    from tive.bench import runner

    def must_not_run(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"{flags}: accepted; the bench would have run")

    monkeypatch.setattr(runner, "run_bench", must_not_run)
    monkeypatch.setattr(runner, "world_inputs", must_not_run)
    monkeypatch.setattr(runner, "run_worlds", must_not_run)
    assert main(["bench", "--out", str(tmp_path / "o"), *flags]) == 2
    assert named in capsys.readouterr().err


def test_settings_built_in_code_are_checked_too() -> None:
    with pytest.raises(TiveError, match="--steps 0: must be at least 1"):
        Recipe(steps=0)
    with pytest.raises(TiveError, match="--proj-dim 0"):
        SelectionSettings(proj_dim=0)
    with pytest.raises(TiveError, match="--records 10"):
        WorldSizes(train=10)
