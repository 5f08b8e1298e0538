"""The platform's Dagster instance, opened from this process without touching its environment.

``dagster.yaml`` names its connection values as ``env:`` references, which the webserver, the daemon and
the run processes read from the environment the local stack gives them (``dagster_environment``). Code of
the local stack that reads Dagster's storage itself (``make status``, the restore) fills the same
references from the settings instead, so the file stays the one description of the instance.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from crypto_platform.settings import PlatformSettings
from local_stack.stack import REPO_ROOT, dagster_environment

if TYPE_CHECKING:
    from dagster import DagsterInstance


def resolve_env_references(config: object, env: Mapping[str, str], key: str = "") -> object:
    """``config`` with every ``{"env": NAME}`` replaced by ``env[NAME]``; a ``port`` as an integer (a password
    of digits stays text)."""
    if isinstance(config, dict):
        if set(config) == {"env"}:
            value = env[config["env"]]
            return int(value) if key == "port" else value
        return {name: resolve_env_references(value, env, name) for name, value in config.items()}
    if isinstance(config, list):
        return [resolve_env_references(item, env, key) for item in config]
    return config


@contextmanager
def dagster_instance(settings: PlatformSettings,
                     config_file: Path = REPO_ROOT / "dagster.yaml") -> Iterator[DagsterInstance]:
    """The instance the platform's Dagster uses: its storage in PostgreSQL as role ``dagster``."""
    from dagster import DagsterInstance
    from dagster._core.instance.ref import InstanceRef

    env = dagster_environment(settings)
    storage = resolve_env_references(yaml.safe_load(config_file.read_text())["storage"], env)
    home = Path(env["DAGSTER_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    ref = InstanceRef.from_dir(str(home), overrides={"storage": storage})
    with DagsterInstance.from_ref(ref) as instance:
        yield instance
