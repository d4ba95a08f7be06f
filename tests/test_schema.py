"""foundation.schema: config sections checked against their dataclasses, errors naming the full key path;
reading a run config imports no torch."""

import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from foundation.schema import INTERNAL, ConfigError, Section, from_dict

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Item(Section):
    name: str
    num_frames: int = 1
    kind: Literal["video", "image"] | None = None
    note: str = field(default="", metadata=INTERNAL)

    def check(self, where: str) -> None:
        if self.num_frames < 1:
            raise ConfigError(f"{where}.num_frames: must be >= 1, got {self.num_frames}")


@dataclass
class Root:
    items: list[Item]
    scale: float = 1.0
    pair: tuple[float, float] = (0.0, 1.0)
    flag: bool = False
    weights: dict[str, float] = field(default_factory=dict)
    tag: str | None = None


def test_values_are_converted_and_defaults_fill_in():
    root = from_dict(
        Root,
        {
            "items": [{"name": "a"}, {"name": "b", "num_frames": 4, "kind": "image"}],
            "scale": 2,
            "pair": [0, 0.5],
            "weights": {"a": 1},
        },
        "data",
    )
    assert root.items == [Item("a"), Item("b", 4, "image")]
    assert root.scale == 2.0 and isinstance(root.scale, float) and root.pair == (0.0, 0.5)
    assert root.weights == {"a": 1.0} and root.tag is None and not root.flag


@pytest.mark.parametrize(
    "data,message",
    [
        (
            {"items": [{"name": "a"}, {"name": "b", "num_frames": "x"}]},
            r"data.items\[1\].num_frames: expected int, got str 'x'",
        ),
        ({"items": [{"name": "a", "num_frames": True}]}, r"data.items\[0\].num_frames: expected int, got bool True"),
        ({"items": [], "flag": 1}, r"data.flag: expected bool, got int 1"),
        ({"items": [], "scale": False}, r"data.scale: expected number, got bool"),
        (
            {"items": [{"name": "a", "frames": 2}]},
            r"data.items\[0\].frames: unknown key \(known: kind, name, num_frames\)",
        ),
        ({"items": [{"name": "a", "note": "x"}]}, r"data.items\[0\].note: unknown key"),
        ({"items": [{"num_frames": 2}]}, r"data.items\[0\].name: required key is missing"),
        ({}, r"data.items: required key is missing"),
        ({"items": {"name": "a"}}, r"data.items: expected a list, got dict"),
        (
            {"items": [{"name": "a", "kind": "audio"}]},
            r"data.items\[0\].kind: 'audio' is not one of \['video', 'image'\]",
        ),
        ({"items": [{"name": "a", "kind": 3}]}, r"data.items\[0\].kind: expected one of 'video', 'image' or null"),
        ({"items": [{"name": "a", "num_frames": 0}]}, r"data.items\[0\].num_frames: must be >= 1, got 0"),
        ({"items": [], "pair": [1]}, r"data.pair: expected a list of 2 numbers, got \[1\]"),
        ({"items": [], "weights": {"a": "heavy"}}, r"data.weights.a: expected number, got str 'heavy'"),
        ({"items": [], "tag": 5}, r"data.tag: expected str or null, got int 5"),
        ([], r"data: expected an object, got list"),
    ],
)
def test_errors_name_the_full_key_path(data, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(Root, data, "data")


def test_the_root_section_has_no_prefix():
    with pytest.raises(ConfigError, match=r"^items\[0\].name: required key is missing"):
        from_dict(Root, {"items": [{}]}, "")
    assert Item.from_dict({"name": "a"}, "x") == Item("a")


def test_loading_a_run_config_imports_no_torch():
    code = (
        "from pipeline.train.config import load_config; load_config('configs/pretrain_1f.json'); "
        "import sys; assert 'torch' not in sys.modules, 'torch was imported'"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
