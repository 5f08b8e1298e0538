"""Superset's Celery app for the alerts' worker: ``celery --app=celery_worker:app worker`` (this folder on
PYTHONPATH).

It is ``superset.tasks.celery_app`` less one signal handler: its ``teardown`` removes the SQLAlchemy session
after each task, outside any application context, so Flask-SQLAlchemy 3 raises and Celery logs a traceback
per task. The session is already removed when the task's application context ends.
"""

from celery.signals import task_postrun
from superset.tasks.celery_app import app, teardown

task_postrun.disconnect(teardown)

__all__ = ["app"]
