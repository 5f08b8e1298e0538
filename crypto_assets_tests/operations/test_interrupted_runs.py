"""After a restore, Dagster runs the restored storage shows in flight are marked canceled (their process is
gone; left STARTED they would stop the minute-close sensor for good); finished ones are left (queued ones
too: the run queue launches them)."""

from __future__ import annotations

import os
import shutil
import uuid
from unittest import mock

import yaml
from dagster import DagsterInstance, DagsterRun, DagsterRunStatus

from local_stack.dagster_instance import resolve_env_references
from local_stack.interrupted_runs import cancel_interrupted_runs
from local_stack.stack import REPO_ROOT, LocalStack, dagster_environment


def test_runs_in_flight_are_canceled_and_the_others_left(stack: LocalStack) -> None:
    settings = stack.settings
    home = settings.state_dir / "dagster"
    home.mkdir(exist_ok=True)
    shutil.copyfile(REPO_ROOT / "dagster.yaml", home / "dagster.yaml")
    statuses = {status: str(uuid.uuid4()) for status in (
        DagsterRunStatus.STARTED, DagsterRunStatus.NOT_STARTED, DagsterRunStatus.STARTING,
        DagsterRunStatus.FAILURE, DagsterRunStatus.SUCCESS)}
    with mock.patch.dict(os.environ, dagster_environment(settings)), DagsterInstance.get() as instance:
        for status, run_id in statuses.items():
            instance.add_run(DagsterRun(job_name="candles_job", run_id=run_id, status=status))

    canceled = cancel_interrupted_runs(settings)

    assert set(canceled) >= {statuses[s] for s in (DagsterRunStatus.STARTED, DagsterRunStatus.NOT_STARTED,
                                                      DagsterRunStatus.STARTING)}
    with mock.patch.dict(os.environ, dagster_environment(settings)), DagsterInstance.get() as instance:
        now = {status: instance.get_run_by_id(run_id).status for status, run_id in statuses.items()}
    assert now == {DagsterRunStatus.STARTED: DagsterRunStatus.CANCELED,
                   DagsterRunStatus.NOT_STARTED: DagsterRunStatus.CANCELED,
                   DagsterRunStatus.STARTING: DagsterRunStatus.CANCELED,
                   DagsterRunStatus.FAILURE: DagsterRunStatus.FAILURE,
                   DagsterRunStatus.SUCCESS: DagsterRunStatus.SUCCESS}


def test_dagster_yaml_references_are_filled_as_dagster_reads_them() -> None:
    """A port becomes an integer; a password of digits stays text (it was turned into an int before)."""
    storage = yaml.safe_load((REPO_ROOT / "dagster.yaml").read_text())["storage"]
    env = {"DAGSTER_PG_HOST": "127.0.0.1", "DAGSTER_PG_PORT": "5432", "DAGSTER_PG_USER": "dagster",
           "DAGSTER_PG_PASSWORD": "123456", "DAGSTER_PG_DB": "dagster"}
    database = resolve_env_references(storage, env)["postgres"]["postgres_db"]
    assert database["port"] == 5432 and database["password"] == "123456" and database["db_name"] == "dagster"
