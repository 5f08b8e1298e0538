"""The README stays true: every setting is documented and every command it gives is run by a test or CI."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from crypto_platform.settings import PlatformSettings
from local_stack.ephemeral import make_state_dir

REPO_ROOT = Path(__file__).resolve().parents[2]
README = (REPO_ROOT / "README.md").read_text()
MAKEFILE = (REPO_ROOT / "Makefile").read_text()
# Where each target the README gives is exercised; the cheap ones are run below.
EXERCISED_ELSEWHERE = {
    "up": "test_end_to_end, test_local_stack", "down": "test_end_to_end, test_local_stack",
    "status": "test_end_to_end, test_local_stack", "test": ".ci/run", "lint": ".ci/run", "validate": ".ci/run",
    "backup": "test_backups", "restore": "test_backups", "test-unit": "make test (a subset of it)",
}
RUN_HERE = {"logs", "backfill", "import", "config", "migrate", "clean", "rotate-kafka-password"}
TARGET = r"[a-z]+(?:-[a-z]+)*"


def readme_make_targets() -> set[str]:
    return set(re.findall(rf"`make ({TARGET})", README)) | set(re.findall(rf"^make ({TARGET})", README, re.MULTILINE))


def test_every_setting_is_in_the_readme() -> None:
    missing = [variable for variable, _, _ in PlatformSettings.docs() if f"`{variable}`" not in README]
    assert not missing, f"settings missing from the README: {missing}"


def test_the_settings_table_is_the_one_generated_from_their_declaration() -> None:
    start = README.index("| variable | default | meaning |")
    table = README[start:README.index("\n\n", start)]
    assert table == PlatformSettings.docs_table(), "README's settings table is stale: paste `make config MARKDOWN=1`"


def test_every_make_command_in_the_readme_exists_and_is_exercised() -> None:
    targets = readme_make_targets()
    assert {"up", "test"} <= targets
    for target in targets:
        assert re.search(rf"^{target}:", MAKEFILE, re.MULTILINE), f"README gives make {target}, Makefile lacks it"
        assert target in EXERCISED_ELSEWHERE or target in RUN_HERE, f"nothing runs make {target}"
    ci = (REPO_ROOT / ".ci" / "run").read_text()
    assert all(f"make {t}" in ci for t, where in EXERCISED_ELSEWHERE.items() if where == ".ci/run")


def _make(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "--no-print-directory", *args], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=120, check=False)


@pytest.fixture
def make_env(stack) -> dict[str, str]:
    return {**os.environ, "PYTHON": sys.executable, "VENV": str(Path(sys.prefix))}


def test_the_cheap_commands_work_as_the_readme_says(make_env: dict[str, str], tmp_path: Path) -> None:
    config = _make("config", env=make_env)
    assert config.returncode == 0 and all(v in config.stdout for v, _, _ in PlatformSettings.docs())

    assert "nothing (schema up to date)" in _make("migrate", env=make_env).stdout

    usage = _make("backfill", env=make_env)
    assert usage.returncode != 0 and "usage: make backfill START=" in usage.stdout
    bad = _make("backfill", "START=yesterday", "END=today", env=make_env)
    assert bad.returncode != 0 and "not an ISO-8601" in bad.stderr and "Traceback" not in bad.stderr

    usage = _make("import", env=make_env)
    assert usage.returncode != 0 and "usage: make import FILES=" in usage.stdout
    missing = _make("import", f"FILES={tmp_path / 'BTCUSDT-aggTrades-2024-08.zip'}", env=make_env)
    assert missing.returncode != 0 and "BTCUSDT-aggTrades-2024-08.zip is not a file" in missing.stderr.splitlines()[0]
    assert "Traceback" not in missing.stderr

    state = make_state_dir("crypto-test-readme-")
    (state / "logs").mkdir()
    (state / "logs" / "producer.log").write_text("one\ntwo\n")
    env = {**make_env, "STATE_DIR": str(state)}
    logs = subprocess.run([sys.executable, "-m", "local_stack.cli", "logs", "producer", "--no-follow"], cwd=REPO_ROOT,
                          env=env, capture_output=True, text=True, timeout=60, check=False)
    assert logs.stdout.splitlines() == ["one", "two"]
    unknown = _make("logs", "SERVICE=nope", env=env)
    assert unknown.returncode != 0 and "no log for service 'nope'" in unknown.stdout

    rotate = _make("rotate-kafka-password", env=env)
    assert rotate.returncode == 2 and "usage: make rotate-kafka-password KAFKA_USER=" in rotate.stdout
    nobody = _make("rotate-kafka-password", "KAFKA_USER=nobody", env=env)
    assert nobody.returncode != 0 and nobody.stderr.splitlines()[0] == (
        "crypto-platform: unknown Kafka user 'nobody'; KAFKA_USER is one of platform-admin, binance-producer, "
        "prices-consumer")

    refused = _make("clean", env=env)
    assert refused.returncode != 0 and state.exists() and "FORCE=1" in refused.stdout
    assert _make("clean", "FORCE=1", env=env).returncode == 0
    assert not state.exists()
