"""`.env.example` documents every setting, with its default."""

from __future__ import annotations

from pathlib import Path

from motif.config import Settings

ROOT = Path(__file__).resolve().parents[2]


def test_env_example_lists_every_setting_and_loads_as_the_defaults() -> None:
    example = ROOT / ".env.example"
    names = {line.split("=", 1)[0] for line in example.read_text().splitlines() if line and not line.startswith("#")}
    assert names == {name.upper() for name in Settings.model_fields}
    documented, default = Settings(_env_file=example), Settings(_env_file=None)  # type: ignore[call-arg]
    assert documented.model_dump(exclude={"database_url"}) == default.model_dump(exclude={"database_url"})
    assert documented.resolved_database_url == default.resolved_database_url  # DATABASE_URL= means the default
