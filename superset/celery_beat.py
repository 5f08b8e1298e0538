"""Celery beat for Superset's alerts & reports, without the Superset app (~50 MB instead of ~270 MB).

The beat only sends task names on a schedule; the worker (``superset.tasks.celery_app``) runs them. Its
broker and schedule come from ``CeleryConfig`` in the file SUPERSET_CONFIG_PATH names, the worker's own.
Run: ``python -m celery_beat --schedule PATH`` with this folder on PYTHONPATH (without Celery's command
line, whose interactive shell costs ~11 MB).
"""

from __future__ import annotations

import argparse
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


def main() -> None:
    parser = argparse.ArgumentParser(description="Celery beat of Superset's alerts & reports")
    parser.add_argument("--schedule", required=True, help="file of the schedule's last run times")
    app.Beat(loglevel="INFO", schedule=parser.parse_args().schedule).run()


if __name__ == "__main__":
    main()
