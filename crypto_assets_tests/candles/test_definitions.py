"""The Dagster code location loads, validates as CI runs it, and has the shape the UI should show."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urlsplit

import dagster as dg
import pytest
import yaml

from crypto_assets.assets.catalog import CHECKS
from crypto_assets.definitions import defs
from crypto_assets.resources import build_resources
from crypto_platform.settings import PlatformSettings

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_dagster_definitions_validate_passes(tmp_path: Path) -> None:
    """As CI runs it: a temporary instance (outside the repo, whose dagster.yaml wants PostgreSQL)."""
    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"}
    command = [sys.executable, "-m", "dagster", "definitions", "validate", "-w", str(REPO / "workspace.yaml")]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "All code locations passed validation" in result.stdout + result.stderr


def test_lineage_groups_kinds_freshness_and_checks() -> None:
    graph = defs.resolve_asset_graph()
    keys = {key.to_user_string() for key in graph.get_all_asset_keys()}
    rollups = {"aggregated_15min", "aggregated_1hour", "aggregated_4hour", "aggregated_1day"}
    assert keys == {"real_time_prices", "aggregated_1min", "aggregated_5min", "latest_prices", *rollups}
    parents = {key: {p.to_user_string() for p in graph.get(dg.AssetKey(key)).parent_keys} for key in keys}
    assert parents == {"real_time_prices": set(), "aggregated_1min": {"real_time_prices"},
                       "aggregated_5min": {"real_time_prices"},
                       "latest_prices": {"aggregated_1min", "real_time_prices"},
                       **{rollup: {"aggregated_1min"} for rollup in rollups}}
    for key in ("aggregated_1min", "aggregated_5min", "latest_prices", *rollups):
        node = graph.get(dg.AssetKey(key))
        assert node.group_name == "market_candles"
        assert {"spark", "postgres"} <= set(node.kinds)
        assert node.freshness_policy is not None
        assert node.description
    checks = {(k.asset_key.to_user_string(), k.name) for k in graph.asset_check_keys}
    assert len(checks) == 14 + 4 * 6
    assert ("real_time_prices", "source_is_fresh") in checks
    for key in ("aggregated_5min", *rollups):
        assert (key, "consistent_with_aggregated_1min") in checks


def test_the_minute_close_sensor_is_evaluated_on_every_daemon_loop_for_the_tagged_candle_job() -> None:
    sensor = defs.resolve_sensor_def("minute_close_sensor")
    assert sensor.minimum_interval_seconds <= 5
    assert sensor.job_name == "candles_job"
    assert defs.resolve_job_def("candles_job").tags["crypto/pipeline"] == "candles"


def test_instance_config_uses_postgres_a_queue_limited_to_one_candle_run_and_no_telemetry() -> None:
    config = yaml.safe_load((REPO / "dagster.yaml").read_text())
    assert config["storage"]["postgres"]["postgres_db"]["db_name"] == {"env": "DAGSTER_PG_DB"}
    assert config["run_coordinator"]["class"] == "QueuedRunCoordinator"
    assert {"key": "crypto/pipeline", "value": "candles", "limit": 1} in \
        config["run_coordinator"]["config"]["tag_concurrency_limits"]
    assert config["run_coordinator"]["config"]["dequeue_interval_seconds"] == 1
    assert config["telemetry"]["enabled"] is False


def test_the_candle_job_runs_each_assets_checks_as_one_step() -> None:
    """A step costs Dagster ~0.1 s whatever its query does: 46 checks of their own made a run 4 s longer. The
    five-minute table's agreement with the one-minute one keeps a step of its own, so that a failed one-minute
    run leaves the five-minute integrity checks still running. The four rolled-up intervals are one step."""
    steps = {step.node_def.name: {(key.asset_key.to_user_string(), key.name) for key in step.check_keys}
             for step in CHECKS}
    assert len(steps) == 9 and sum(len(keys) for keys in steps.values()) == 14 + 4 * 6
    assert len(steps["aggregated_1min_checks"]) == 6
    assert steps["aggregated_5min_consistent_with_aggregated_1min"] == {("aggregated_5min",
                                                                          "consistent_with_aggregated_1min")}
    assert len(defs.resolve_job_def("candles_job").graph.nodes) == 4 + 8


def test_market_db_config_names_the_candle_writer_password_variable_and_never_holds_its_value(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STATE_DIR", str(tmp_path))
    monkeypatch.setenv("CANDLE_WRITER_PASSWORD", "from the environment")
    monkeypatch.delenv("DATABASE_URL", raising=False)
    market_db = build_resources()["market_db"]
    shown = json.loads(market_db.get_resource_definition().config_schema.default_value_as_json_str)
    assert shown["password"] == {"env": "CANDLE_WRITER_PASSWORD"}
    assert "from the environment" not in json.dumps(shown)
    assert urlsplit(shown["server_url"]).username is None
    monkeypatch.setattr(PlatformSettings, "from_env", None)  # a store is made without reading the settings again
    url = urlsplit(market_db.process_config_and_initialize().store().database_url)
    assert (url.username, unquote(url.password)) == ("candle_writer", "from the environment")
    assert not (tmp_path / "secrets").exists()


def test_market_db_without_a_configured_password_logs_in_with_the_generated_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STATE_DIR", str(tmp_path))
    monkeypatch.delenv("CANDLE_WRITER_PASSWORD", raising=False)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    market_db = build_resources()["market_db"]
    assert not (tmp_path / "secrets").exists()  # made at the first store, at run time
    url = urlsplit(market_db.process_config_and_initialize().store().database_url)
    assert url.username == "candle_writer"
    assert unquote(url.password) == (tmp_path / "secrets" / "candle_writer").read_text().strip()
