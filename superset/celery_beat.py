"""Celery beat for Superset's alerts & reports, without the Superset app (~40 MB instead of ~250 MB).

The beat only sends task names on a schedule; the worker (``superset.tasks.celery_app``) runs them. Its
broker and schedule come from ``CeleryConfig`` in the file SUPERSET_CONFIG_PATH names, the worker's own.
Run: ``celery --app=celery_beat:app beat`` with this folder on PYTHONPATH.
"""

from __future__ import annotations

import importlib.util
import os

from celery import Celery


def _superset_config() -> object:
    spec = importlib.util.spec_from_file_location("superset_config", os.environ["SUPERSET_CONFIG_PATH"])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


app = Celery("superset")
app.config_from_object(_superset_config().CeleryConfig)
app.conf.imports = ()  # the task modules need the Superset app; the beat only sends their names
