"""A YAML step mapping -> a click command's params, exactly as the same options on its command line."""

from __future__ import annotations

from pathlib import Path

import click
import pytest

from edgexfer.cliparams import command_params, option_keys
from edgexfer.errors import ConfigError


@click.command("tool")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--size", type=int, default=64)
@click.option("--lr", type=float, default=None)
@click.option("--mode", type=click.Choice(["fast", "slow"]), default="fast")
@click.option("--strict", is_flag=True)
@click.option("--no-shared-cache", is_flag=True)
@click.option("--smoke/--no-smoke", default=True)
@click.option("--typed/--untyped", "strongly_typed", default=None)
@click.option("--bootstrap", "bootstrap_resamples", type=int, default=2000)
@click.option("--batch", "batches", multiple=True)
@click.option("--backend", required=True)
@click.option("--name", default=None)
def tool(**params):
    """A command shaped like edgexfer's: an argument, renamed options, flags, a repeatable option."""


FIXED = {"run_dir": "runs/x"}


def params(**options):
    return command_params(tool, {"backend": "b", **options}, FIXED, "run 'r' stage 'tool'")


def test_keys_are_the_long_options_with_underscores():
    assert set(option_keys(tool)) == {"size", "lr", "mode", "strict", "no_shared_cache", "smoke", "typed",
                                      "bootstrap", "batch", "backend", "name"}
    assert option_keys(tool)["bootstrap"].name == "bootstrap_resamples"


def test_defaults_are_click_defaults_and_values_are_typed():
    got = params()
    assert got == {"run_dir": Path("runs/x"), "size": 64, "lr": None, "mode": "fast", "strict": False,
                   "no_shared_cache": False, "smoke": True, "strongly_typed": None, "bootstrap_resamples": 2000,
                   "batches": (), "backend": "b", "name": None}
    got = params(size=32, lr=1, mode="slow", bootstrap=100, batch=[1, 8], name="a b")
    assert (got["size"], got["lr"], got["mode"], got["bootstrap_resamples"]) == (32, 1.0, "slow", 100)
    assert got["batches"] == ("1", "8") and got["name"] == "a b"
    assert params(batch=4)["batches"] == ("4",)  # one value for a repeatable option
    assert params(name="--looks-like-an-option")["name"] == "--looks-like-an-option"


def test_flags_take_true_or_false_both_ways():
    assert params(strict=True)["strict"] is True and params(strict=False)["strict"] is False
    assert params(no_shared_cache=True)["no_shared_cache"] is True
    assert params(smoke=False)["smoke"] is False and params(smoke=True)["smoke"] is True
    assert params(typed=False)["strongly_typed"] is False and params(typed=True)["strongly_typed"] is True


def test_null_keeps_a_none_default_and_is_refused_elsewhere():
    assert params(lr=None)["lr"] is None
    with pytest.raises(ConfigError, match="size needs a value"):
        params(size=None)


@pytest.mark.parametrize("options, message", [
    ({"sise": 3}, "unknown key 'sise' in run 'r' stage 'tool'; did you mean 'size'"),
    ({"bootstrap_resamples": 3}, "did you mean 'bootstrap'"),
    ({"batches": [1]}, "did you mean 'batch'"),
    ({"run_dir": "y"}, r"run 'r' stage 'tool': 'run_dir' is set by the pipeline \(runs/x\)"),
    ({"size": "big"}, "run 'r' stage 'tool': size: 'big' is not a valid integer"),
    ({"size": 2.5}, "size: '2.5' is not a valid integer"),
    ({"size": True}, "size must be an integer, got True"),
    ({"lr": "fast"}, "lr: 'fast' is not a valid float"),
    ({"mode": "medium"}, "mode: 'medium' is not one of 'fast', 'slow'"),
    ({"mode": False}, "mode must be one of fast, slow, got False"),
    ({"strict": "yes"}, "strict must be true or false, got 'yes'"),
    ({"smoke": 1}, "smoke must be true or false, got 1"),
    ({"size": [1, 2]}, "size takes one value, not a list"),
    ({"name": {"a": 1}}, "name takes one value, not a mapping"),
    ({"batch": [[1]]}, "batch takes values, not a list"),
    ({"backend": None}, "'backend' is required"),
])
def test_bad_steps_are_one_line_naming_the_key(options, message):
    with pytest.raises(ConfigError, match=message) as info:
        params(**options)
    assert "\n" not in str(info.value)


def test_a_fixed_option_is_passed_as_that_option():
    @click.command("other")
    @click.option("--run", "run_dir", default=None)
    @click.option("--out", "out_dir", default="results")
    def other(**params):
        """An option (not an argument) carries the run directory, like bench --run."""

    assert command_params(other, {"out": "o"}, {"run": "-r"}, "w") == {"run_dir": "-r", "out_dir": "o"}
    with pytest.raises(ConfigError, match="'run' is set by the pipeline"):
        command_params(other, {"run": "x"}, {"run": "r"}, "w")
