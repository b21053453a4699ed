"""Tests for clipsort.config: sources, precedence, validation and the documented file."""

from __future__ import annotations

from pathlib import Path

import pytest

from clipsort.config import DEFAULT_TEMPLATES, find_config_file, load_settings, render_config_toml
from clipsort.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def test_defaults_without_any_file(data_root: Path) -> None:
    """With no file, environment or flags every option has its documented default."""
    settings = load_settings()
    assert settings.root == Path("Data").absolute(), "relative to the working directory, made absolute"
    assert settings.model == "clip-ViT-B-32"
    assert settings.mode == "reference"
    assert settings.aggregate == "max"
    assert settings.prompt_templates == list(DEFAULT_TEMPLATES)


def test_precedence_file_then_env_then_flag(data_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A flag beats the environment, which beats the file, which beats the default."""
    Path("config.toml").write_text('mode = "text"\nbatch_size = 8\naggregate = "avg"\n')
    assert load_settings().mode == "text"
    monkeypatch.setenv("CLIPSORT_BATCH_SIZE", "16")
    monkeypatch.setenv("CLIPSORT_MODE", "reference")
    settings = load_settings(None, {"mode": "text", "root": None})
    assert (settings.mode, settings.batch_size, settings.aggregate) == ("text", 16, "avg")


def test_nested_environment_reaches_dataset_overrides(
    data_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CLIPSORT_DATASETS__<name>__MODE overrides one dataset only."""
    Path("config.toml").write_text('[datasets.shoes]\naggregate = "avg"\n')
    monkeypatch.setenv("CLIPSORT_DATASETS__SHOES__MODE", "text")
    settings = load_settings()
    assert settings.for_dataset("shoes").mode == "text"
    assert settings.for_dataset("shoes").aggregate == "avg"
    assert settings.for_dataset("other").mode == "reference"


def test_flags_beat_dataset_overrides(data_root: Path) -> None:
    """A CLI flag applies to every dataset, even one whose table sets that key."""
    Path("config.toml").write_text('[datasets.shoes]\nmode = "text"\naction = "copy"\n')
    forced = load_settings(None, {"mode": "reference", "aggregate": None})
    assert forced.for_dataset("shoes").mode == "reference"
    assert forced.for_dataset("shoes").action == "copy"


def test_the_unknown_knob_is_automatic_per_kind_of_mode_unless_set(data_root: Path) -> None:
    """unknown_held auto: 0.05 in the CLIP modes, 0.07 in finetuned; a number, global or per dataset, wins."""
    Path("config.toml").write_text(
        '[datasets.tuned]\nmode = "finetuned"\n[datasets.set]\nmode = "finetuned"\nunknown_held = 0.1\n'
    )
    settings = load_settings()
    assert settings.unknown_held == "auto"
    found = {name: settings.for_dataset(name).unknown_held for name in ("plain", "tuned", "set")}
    assert found == {"plain": 0.05, "tuned": 0.07, "set": 0.1}
    fixed = load_settings(None, {"unknown_held": 0.2})
    assert fixed.for_dataset("plain").unknown_held == fixed.for_dataset("tuned").unknown_held == 0.2


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('mode = "bogus"\n', "mode = 'bogus'"),
        ("batch_size = -1\n", "batch_size = -1"),
        ('colour = "red"\n', "colour: unknown option"),
        ('[datasets.x]\nmood = "text"\n', "datasets.x.mood: unknown option"),
        ('prompt_templates = ["no placeholder"]\n', "prompt_templates"),
        ('device = "tpu"\n', "device = 'tpu'"),
        ('image_formats = ["NOPE"]\n', "NOPE"),
        ("mode = \n", "not valid TOML"),
    ],
)
def test_invalid_config_names_key_and_value(data_root: Path, text: str, needle: str) -> None:
    """Each invalid value is reported with the key and the value at fault."""
    Path("config.toml").write_text(text)
    with pytest.raises(ConfigError, match=None) as caught:
        load_settings()
    assert needle in str(caught.value)


def test_explicit_missing_config_file_is_an_error(data_root: Path) -> None:
    """--config naming a file that does not exist is a ConfigError, not a silent default."""
    with pytest.raises(ConfigError, match="does not exist"):
        find_config_file(Path("nope.toml"))


def test_shipped_config_toml_is_the_rendered_documentation() -> None:
    """The top-level config.toml documents every option exactly as the model defines it."""
    assert (REPO / "config.toml").read_text() == render_config_toml()


def test_rendered_config_parses_to_defaults(data_root: Path) -> None:
    """The commented file is valid TOML that changes nothing."""
    path = data_root / "c.toml"
    path.write_text(render_config_toml())
    assert load_settings(path).model_dump() == load_settings().model_dump()
