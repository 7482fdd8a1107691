"""Config plumbing: YAML loading, unknown keys with the closest valid one, configs as plain dicts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

import pytest

from edgexfer.config import check_keys, load_yaml, to_dict
from edgexfer.errors import ConfigError


@dataclass(frozen=True)
class Inner:
    path: Path = Path("a/b")


@dataclass(frozen=True)
class Sample:
    size: int = 64
    out: Optional[Path] = None
    batches: Tuple[int, ...] = (1, 8)
    inner: Inner = Inner()
    table: dict = None


def test_to_dict_is_plain_json_data():
    config = Sample(out=Path("runs/x"), table={1: (Path("p"),)})
    assert to_dict(config) == {"size": 64, "out": "runs/x", "batches": [1, 8], "inner": {"path": "a/b"},
                               "table": {"1": ["p"]}}


@pytest.mark.parametrize("data, message", [
    ({"sise": 3}, "unknown key 'sise' in stage; did you mean 'size'?"),
    ({"size": 1, "zzz": 3}, "unknown key 'zzz' in stage; valid keys: batches, out, size"),
])
def test_check_keys_names_the_key_and_the_closest_valid_one(data, message):
    with pytest.raises(ConfigError, match=message) as info:
        check_keys(data, ["size", "out", "batches"], "stage")
    assert "\n" not in str(info.value)
    check_keys({"size": 1, "out": 2}, ["size", "out", "batches"], "stage")  # valid keys pass


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
