"""Superset's Celery app for the alerts' worker: ``python -m celery_worker`` (this folder on PYTHONPATH).

It is ``superset.tasks.celery_app`` less one signal handler: its ``teardown`` removes the SQLAlchemy session
after each task, outside any application context, so Flask-SQLAlchemy 3 raises and Celery logs a traceback
per task. The session is already removed when the task's application context ends.

The worker is one process with the solo pool: alert queries and notifications run one after another, and
no pool child holds a second copy of the Superset application (~270 MB resident, most of the worker). It
starts without Celery's command line, whose interactive shell (click-repl, prompt_toolkit) costs ~12 MB.
"""

import sys

from celery.signals import task_postrun
from celery.utils.nodenames import default_nodename, host_format
from superset.tasks.celery_app import app, teardown

task_postrun.disconnect(teardown)

__all__ = ["app"]


def main() -> None:
    worker = app.Worker(pool_cls="solo", loglevel="INFO", hostname=host_format(default_nodename("superset-worker@%h")),
                        without_gossip=True, without_mingle=True)
    worker.start()
    sys.exit(worker.exitcode)


if __name__ == "__main__":
    main()
