from __future__ import annotations

from pathlib import Path

import pytest
from thrifty.settings import SettingsError, ThriftySettings


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_defaults() -> None:
    s = ThriftySettings()
    assert s.cache.backend == "embedded" and s.cache.semantic and s.embedder.model == "all-MiniLM-L6-v2"


def test_yaml_section_env_and_keywords_in_order_of_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "model_list: []\nthrifty:\n  cache:\n    ttl_seconds: 600\n    max_entries: 5\n"
                           "  verifier:\n    min_similarity: 0.6\n")
    monkeypatch.setenv("THRIFTY_CACHE__MAX_ENTRIES", "7")
    s = ThriftySettings.load(path, cache={"ttl_seconds": 60})
    assert s.cache.ttl_seconds == 60  # keyword beats YAML
    assert s.cache.max_entries == 7  # environment beats YAML
    assert s.verifier.min_similarity == 0.6  # YAML beats the default



def test_an_already_parsed_section_sits_below_the_environment_and_keywords(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("THRIFTY_CACHE__MAX_ENTRIES", "7")
    section = {"cache": {"ttl_seconds": 600, "max_entries": 5}, "verifier": {"min_similarity": 0.6}}
    s = ThriftySettings.from_mapping(section, cache={"ttl_seconds": 60})
    assert (s.cache.ttl_seconds, s.cache.max_entries, s.verifier.min_similarity) == (60, 7, 0.6)
    assert ThriftySettings.from_mapping(None).cache.max_entries == 7
    with pytest.raises(SettingsError, match="cache"):
        ThriftySettings.from_mapping({"cache": {"ttl_seconds": "soon"}})
    with pytest.raises(SettingsError, match="mapping"):
        ThriftySettings.from_mapping(["cache"])  # type: ignore[arg-type]

@pytest.mark.parametrize(("overrides", "field"), [
    ({"cache": {"ttl_seconds": -1}}, "cache.ttl_seconds"),
    ({"cache": {"backend": "mongo"}}, "cache.backend"),
    ({"cache": {"ttl_by_namespace": {"news": 0}}}, "cache.ttl_by_namespace"),
    ({"verifier": {"min_probability": 1.5}}, "verifier.min_probability"),
    ({"cache": {"unknown_knob": 1}}, "cache.unknown_knob"),
    ({"personal_data": {"mode": "maybe"}}, "personal_data.mode"),
])
def test_bad_values_are_rejected_with_the_field_name(overrides: dict[str, object], field: str) -> None:
    with pytest.raises(SettingsError, match=field.replace(".", r"\.")):
        ThriftySettings.load(**overrides)  # type: ignore[arg-type]


def test_bad_environment_value_names_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("THRIFTY_CACHE__MAX_ENTRIES", "lots")
    with pytest.raises(SettingsError, match=r"cache\.max_entries"):
        ThriftySettings.load()


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="does not exist"):
        ThriftySettings.load(tmp_path / "nope.yaml")
    with pytest.raises(SettingsError):
        ThriftySettings.load(write(tmp_path, "thrifty: [unclosed"))
    with pytest.raises(SettingsError, match=r"cache\.max_entries"):
        ThriftySettings.load(write(tmp_path, "thrifty:\n  cache:\n    max_entries: 0\n"))


def test_the_core_imports_without_the_optional_extras() -> None:
    """`pip install thrifty` alone: no redis, redisvl, litellm or langchain."""
    import subprocess
    import sys

    code = ("import sys\n"
            "for name in ('redis', 'redisvl', 'litellm', 'langchain_core'):\n"
            "    sys.modules[name] = None\n"
            "import thrifty\n"
            "from thrifty import SemanticCache, Thrifty, ThriftySettings\n"
            "Thrifty(ThriftySettings(cache={'backend': 'memory'}, ledger={'path': None}))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
