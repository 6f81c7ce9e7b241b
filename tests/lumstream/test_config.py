"""Config precedence and bad values: defaults < TOML < environment < --set."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.settings import ConfigError, describe, env_name
from lumstream.cli import main
from lumstream.config import SECTIONS, load, to_toml


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "lumstream.toml"
    path.write_text(text)
    return path


def test_defaults_without_file_or_env() -> None:
    cfg = load(env={})
    assert cfg.kafka.bootstrap_servers == ""
    assert cfg.kafka.partitions == 4
    assert cfg.events.actions == ("impression", "click", "purchase")


def test_precedence_toml_then_env_then_override(tmp_path: Path) -> None:
    path = write(
        tmp_path, "[kafka]\npartitions = 8\nclient_id = 'from-toml'\n[generator]\nbase_ctr = 0.05\n"
    )
    env = {"LUMSTREAM_KAFKA_PARTITIONS": "16"}
    cfg = load(path, env=env)
    assert cfg.kafka.partitions == 16  # env beats TOML
    assert cfg.kafka.client_id == "from-toml"  # TOML beats default
    assert cfg.generator.base_ctr == 0.05
    cfg = load(path, env=env, overrides={"kafka": {"partitions": "32"}})
    assert cfg.kafka.partitions == 32  # --set beats env


def test_config_file_from_environment(tmp_path: Path) -> None:
    path = write(tmp_path, "[kafka]\nbootstrap_servers = 'kafka-1:9092,kafka-2:9092'\n")
    cfg = load(env={"LUMSTREAM_CONFIG": str(path)})
    assert cfg.kafka.bootstrap_servers == "kafka-1:9092,kafka-2:9092"


def test_list_setting_from_env_is_comma_separated() -> None:
    cfg = load(env={"LUMSTREAM_EVENTS_ACTIONS": "view, click ,buy"})
    assert cfg.events.actions == ("view", "click", "buy")


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        (
            {"LUMSTREAM_KAFKA_PARTITIONS": "many"},
            "kafka.partitions (from environment): expected an integer",
        ),
        ({"LUMSTREAM_KAFKA_PARTITIONS": "0"}, "kafka.partitions (from environment): 0 is below"),
        (
            {"LUMSTREAM_GENERATOR_BASE_CTR": "nan"},
            "generator.base_ctr (from environment): expected a finite",
        ),
        (
            {"LUMSTREAM_METRICS_ENABLED": "perhaps"},
            "metrics.enabled (from environment): expected true/false",
        ),
        ({"LUMSTREAM_BROKER_PORT": "70000"}, "broker.port (from environment): 70000 is above"),
    ],
)
def test_bad_env_value_names_the_setting(env: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(env=env)
    assert needle in str(info.value)
    assert "\n" not in str(info.value)


def test_bad_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"kafka\.partitons: unknown setting"):
        load(write(tmp_path, "[kafka]\npartitons = 3\n"), env={})
    with pytest.raises(ConfigError, match=r"\[kafak\]: unknown config section"):
        load(write(tmp_path, "[kafak]\npartitions = 3\n"), env={})
    with pytest.raises(ConfigError, match="invalid TOML"):
        load(write(tmp_path, "[kafka\n"), env={})
    with pytest.raises(ConfigError, match="not found"):
        load(tmp_path / "missing.toml", env={})
    with pytest.raises(ConfigError, match=r"kafka\.partitions \(from .*\): expected an integer"):
        load(write(tmp_path, "[kafka]\npartitions = true\n"), env={})


def test_every_setting_is_documented_and_round_trips_through_toml(tmp_path: Path) -> None:
    for cls in SECTIONS:
        for env, _typ, _default, doc in describe(cls):
            assert env.startswith("LUMSTREAM_")
            assert doc, f"{env} has no doc line"
    cfg = load(env={"LUMSTREAM_KAFKA_PARTITIONS": "12"})
    again = load(write(tmp_path, to_toml(cfg)), env={})
    assert again.sections() == cfg.sections()


def test_env_name() -> None:
    assert env_name("kafka", "bootstrap_servers") == "LUMSTREAM_KAFKA_BOOTSTRAP_SERVERS"


def test_cli_config_show_and_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LUMSTREAM_CONFIG", raising=False)
    assert main(["--set", "kafka.partitions=6", "config", "show"]) == 0
    assert "partitions = 6" in capsys.readouterr().out
    assert main(["--set", "kafka.partitions=x", "config", "show"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lumstream: config error: kafka.partitions (from command line)")
    assert main(["--set", "nodot=1", "config", "show"]) == 2
    assert main(["config", "show", "--doc"]) == 0
    assert "LUMSTREAM_KAFKA_BOOTSTRAP_SERVERS" in capsys.readouterr().out
