"""The package's public surface: ``__all__`` is honest, and the example configs stay valid."""

from __future__ import annotations

from pathlib import Path

import pytest

import ingest
from ingest.cli.main import build_parser, config_from_args

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.toml"))


def test_all_names_exist_and_are_public() -> None:
    """Every name in ingest.__all__ is importable; no private names are exported."""
    for name in ingest.__all__:
        assert hasattr(ingest, name), name
        assert not name.startswith("_") or name == "__version__"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_example_configs_load(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each annotated example in configs/ is a valid configuration (with its secret from the env)."""
    for env in ("MOI_KEY", "KEYUE_TOKEN", "VOLC_ACCESSKEY", "VOLC_SECRETKEY"):
        monkeypatch.setenv(env, "example-key")
    args = build_parser().parse_args(["run", "--config", str(path)])
    config = config_from_args(args)
    assert config.source.path
    dumped = config.public_dump()
    assert "example-key" not in str(dumped)


def test_there_are_example_configs() -> None:
    """configs/ holds the annotated examples the README points to."""
    assert {p.name for p in CONFIGS} >= {"moi.toml", "migration.toml", "local.toml", "keyue.toml", "viking.toml"}
