"""Strict config loading: unknown keys, wrong types, bad YAML each give one clear ConfigError."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgexfer.config import from_dict, load_yaml, to_dict
from edgexfer.errors import ConfigError


@dataclass(frozen=True)
class Sample:
    size: int = 64
    lr: float = 0.1
    out: Optional[Path] = None
    batches: Tuple[int, ...] = (1, 8)
    names: List[str] = ()
    strict: bool = False

    def __post_init__(self):
        if self.size <= 0:
            raise ConfigError(f"size must be > 0, got {self.size}")


def test_round_trip():
    config = from_dict(Sample, {"size": 32, "lr": 1, "out": "runs/x", "batches": [1, 2], "names": ["a"]}, "s")
    assert config == Sample(size=32, lr=1.0, out=Path("runs/x"), batches=(1, 2), names=["a"])
    assert to_dict(config)["out"] == "runs/x" and to_dict(config)["batches"] == [1, 2]


@pytest.mark.parametrize("data, message", [
    ({"sise": 3}, "unknown key 'sise' in stage; did you mean 'size'?"),
    ({"zzz": 3}, "valid keys"),
    ({"size": "64"}, "stage.size must be an integer"),
    ({"size": True}, "stage.size must be an integer"),
    ({"lr": "fast"}, "stage.lr must be a number"),
    ({"strict": "yes"}, "stage.strict must be true or false"),
    ({"batches": 8}, "stage.batches must be a list"),
    ({"batches": [1, "x"]}, r"stage.batches\[1\] must be an integer"),
    ({"size": -1}, "size must be > 0"),
])
def test_bad_values_are_one_line(data, message):
    with pytest.raises(ConfigError, match=message) as info:
        from_dict(Sample, data, "stage")
    assert "\n" not in str(info.value)


@given(st.dictionaries(st.text(min_size=1, max_size=8), st.integers() | st.text() | st.none(), max_size=4))
def test_any_mapping_either_builds_or_raises_config_error(data):
    try:
        config = from_dict(Sample, data, "stage")
    except ConfigError:
        return
    assert isinstance(config, Sample) and set(data) <= {"size", "lr", "out", "batches", "names", "strict"}


@dataclass(frozen=True)
class Abstract:
    """Hints through typing's abstract aliases (their origins are collections.abc classes)."""

    seq: Sequence[int] = ()
    table: Mapping[str, float] = None
    pair: Tuple[int, str] = (0, "")
    counts: Dict[str, int] = None


@pytest.mark.parametrize("data, message", [
    ({"seq": [1, "x"]}, r"stage.seq\[1\] must be an integer, got 'x'"),
    ({"seq": "123"}, "stage.seq must be a list"),
    ({"table": [1.0]}, "stage.table must be a mapping"),
    ({"table": {"a": "fast"}}, "stage.table.a must be a number, got 'fast'"),
    ({"counts": {1: 2}}, "stage.counts key 1 must be a string"),
    ({"pair": [1]}, "stage.pair must have 2 items, got 1"),
    ({"pair": [1, 2]}, r"stage.pair\[1\] must be a string"),
])
def test_abstract_and_fixed_length_hints_are_checked(data, message):
    """typing.Sequence/Mapping items and fixed-length tuples are checked like List/Dict (they were not)."""
    with pytest.raises(ConfigError, match=message):
        from_dict(Abstract, data, "stage")


def test_abstract_hints_convert_losslessly():
    config = from_dict(Abstract, {"seq": [1, 2], "table": {"a": 1}, "pair": [3, "b"], "counts": {"x": 4}}, "s")
    assert config == Abstract(seq=(1, 2), table={"a": 1.0}, pair=(3, "b"), counts={"x": 4})
    assert isinstance(config.table["a"], float)


def test_load_yaml_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_yaml(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("a: [1, 2\nb: 3\n")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        load_yaml(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_yaml(tmp_path / "list.yaml")
    (tmp_path / "empty.yaml").write_text("")
    with pytest.raises(ConfigError, match="is empty"):
        load_yaml(tmp_path / "empty.yaml")
    (tmp_path / "ok.yaml").write_text("size: 3\n")
    assert load_yaml(tmp_path / "ok.yaml") == {"size": 3}
