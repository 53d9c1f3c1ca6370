"""Config loading: YAML -> frozen dataclasses, overrides, errors that name the key and file."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar

import pytest
import yaml

from asr.config import apply_overrides, config_diff, dump_config, from_dict, load_config, parse_override, to_dict
from asr.errors import ConfigError


@dataclass(frozen=True)
class Inner:
    hidden: int = 4  # units
    rate: float = 0.5  # a fraction
    kind: str = "gru"  # a name
    on: bool = True  # a switch
    betas: tuple[float, float] = (0.9, 0.98)  # a pair
    maybe: int | None = None  # optional


@dataclass(frozen=True)
class Outer:
    DERIVED: ClassVar[dict[str, str]] = {"inner.hidden": "filled in by the program"}
    name: str = "x"  # a name
    inner: Inner = field(default_factory=Inner)  # a section
    other: Inner = field(default_factory=lambda: Inner(kind="lstm"))  # another section


def write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_defaults_and_yaml_values(tmp_path):
    path = write(tmp_path, "name: y\nother:\n  rate: 1\n  betas: [0.8, 0.9]\n  maybe: 3\n")
    config = load_config(Outer, path)
    assert config == Outer(name="y", other=Inner(kind="lstm", rate=1.0, betas=(0.8, 0.9), maybe=3))
    assert isinstance(config.other.rate, float)
    assert load_config(Outer, None) == Outer()


def test_overrides_use_yaml_values_and_replace():
    config = apply_overrides(Outer(), ["other.kind=rnn", "other.on=false", "other.rate=2e-3", "name=abc"])
    assert config.other == Inner(kind="rnn", on=False, rate=0.002)
    assert config.name == "abc"
    assert config.inner == Inner()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.name = "z"  # type: ignore[misc]
    assert parse_override("a.b=[1, 2]") == (["a", "b"], [1, 2])
    assert parse_override("a=none") == (["a"], "none")


@pytest.mark.parametrize(
    "override, needle",
    [
        ("other.hiden=3", "other.hiden"),
        ("nope=1", "nope"),
        ("other.hidden=abc", "other.hidden"),
        ("other.on=3", "other.on"),
        ("other.hidden=1.5", "other.hidden"),
        ("other.hidden=true", "other.hidden"),
        ("other.betas=[1]", "other.betas"),
        ("name.sub=1", "name"),
        ("inner.hidden=3", "inner.hidden"),
    ],
)
def test_bad_override_names_the_key(override, needle):
    with pytest.raises(ConfigError) as err:
        apply_overrides(Outer(), [override])
    assert needle in str(err.value)
    assert override in str(err.value)


def test_unknown_key_suggests_and_names_file(tmp_path):
    path = write(tmp_path, "other:\n  hiden: 3\n")
    with pytest.raises(ConfigError) as err:
        load_config(Outer, path)
    message = str(err.value)
    assert str(path) in message and "other.hiden" in message and "other.hidden" in message


def test_wrong_type_in_file_and_derived_key(tmp_path):
    with pytest.raises(ConfigError, match="other.rate"):
        load_config(Outer, write(tmp_path, "other:\n  rate: fast\n"))
    with pytest.raises(ConfigError, match="inner.hidden.*filled in by the program"):
        load_config(Outer, write(tmp_path, "inner:\n  hidden: 3\n"))
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(Outer, write(tmp_path, "other: [\n"))
    with pytest.raises(ConfigError, match="not found"):
        load_config(Outer, tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="other.*expects Inner"):
        load_config(Outer, write(tmp_path, "other: 3\n"))


def test_dump_round_trip(tmp_path):
    config = Outer(name="q", other=Inner(rate=0.25, betas=(0.5, 0.6), maybe=None))
    path = tmp_path / "out" / "config.yaml"
    text = dump_config(config, path, header="resolved")
    assert path.read_text() == text and text.startswith("# resolved\n")
    data = yaml.safe_load(text)
    assert "hidden" not in data["inner"]  # derived keys are left out
    assert data["other"]["betas"] == [0.5, 0.6]
    assert load_config(Outer, path) == config
    assert [p.name for p in path.parent.iterdir()] == ["config.yaml"]  # no temporary left behind


def test_from_dict_and_diff():
    config = from_dict(Inner, {"hidden": 8})
    assert config.hidden == 8
    assert config_diff(to_dict(Outer()), to_dict(apply_overrides(Outer(), ["other.rate=0.1"]))) == [
        "other.rate: 0.5 -> 0.1"
    ]
