"""Superset's configuration for the platform, loaded through SUPERSET_CONFIG_PATH.

Everything that differs per machine or is secret comes from the environment, which the local stack
(``local_stack/superset.py``) or docker-compose provides; there is no default secret or password here,
so a Superset started without them fails at once instead of running with a guessable key.
"""

from __future__ import annotations

import os


def _required(name: str) -> str:
    value = os.environ.get(name, "").strip()
    if not value:
        raise RuntimeError(f"{name} is not set; start Superset through `make up` or docker-compose")
    return value


SECRET_KEY = _required("SUPERSET_SECRET_KEY")
# Superset's own metadata (users, dashboards, charts) in the platform's PostgreSQL, database `superset`.
SQLALCHEMY_DATABASE_URI = _required("SUPERSET_METADATA_URI")

SUPERSET_WEBSERVER_ADDRESS = os.environ.get("BIND_HOST", "127.0.0.1")
SUPERSET_WEBSERVER_PORT = int(os.environ.get("SUPERSET_PORT", "8088"))
SUPERSET_WEBSERVER_TIMEOUT = 120

FEATURE_FLAGS = {
    "DASHBOARD_NATIVE_FILTERS": True,
    "DASHBOARD_CROSS_FILTERS": True,
    # Alerts & reports need Celery workers, a beat scheduler and a headless browser: not run here.
    "ALERT_REPORTS": False,
}

# Charts of a live dashboard are refreshed every minute; a short cache spares the database on reloads.
DATA_CACHE_CONFIG = {"CACHE_TYPE": "SimpleCache", "CACHE_DEFAULT_TIMEOUT": 30}
CACHE_CONFIG = {"CACHE_TYPE": "SimpleCache", "CACHE_DEFAULT_TIMEOUT": 300}
RATELIMIT_STORAGE_URI = "memory://"

# SQL Lab stays on for the read-only connection; results are capped so a stray query cannot flood the UI.
SQL_MAX_ROW = 100_000
DISPLAY_MAX_ROW = 10_000
SQLLAB_TIMEOUT = 60
SUPERSET_LOAD_EXAMPLES = False
