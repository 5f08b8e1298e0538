"""Idempotent Superset bootstrap, run with the Superset virtual environment's Python by the local stack.

One process, one app start: schema upgrade and roles (``--init``), the administrator, then the dashboards
bundle in ``superset/bundle`` imported as Superset's own import does (a zip of the export YAML), with the
read-only database password injected at import, then (``--alerts``) the alerts and reports of
``superset/alerts.yaml`` through Superset's REST API. Secrets come from the environment and are never printed.
Each step prints one logfmt line with ``changed=0|1``; nothing changes when everything is in place.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import sys
import time
import zipfile
from pathlib import Path
from urllib.parse import urlsplit

import prison
import yaml

BUNDLE_ROOT = "crypto_platform_bundle"
DATABASE_FILE = "databases/crypto_market_data.yaml"
MASKED_PASSWORD = "XXXXXXXXXX"
ALERT_CRONTAB = "* * * * *"
ALERT_WORKING_TIMEOUT_S = 300
LOG_RETENTION_DAYS = 7
# What GET /api/v1/report/<id> returns that the bootstrap sets; the rest (state, last value) is Superset's.
COMPARED_FIELDS = ("type", "name", "description", "active", "crontab", "timezone", "sql", "database", "chart",
                   "validator_type", "validator_config_json", "grace_period", "working_timeout", "log_retention",
                   "report_format", "recipients", "owners", "force_screenshot")


def say(step: str, **fields: object) -> None:
    """One logfmt line per step, flushed so the local stack can show progress as it happens."""
    rendered = " ".join(f"{key}={value}" for key, value in fields.items())
    print(f"superset-bootstrap step={step} {rendered}".rstrip(), flush=True)


def env(name: str) -> str:
    value = os.environ.get(name, "")
    if not value:
        raise SystemExit(f"{name} is not set")
    return value


def bundle_files(bundle_dir: Path, market_data_uri: str) -> dict[str, str]:
    """The bundle's YAML, with the database URI pointed at this deployment's server (password masked)."""
    files = {str(p.relative_to(bundle_dir)): p.read_text() for p in sorted(bundle_dir.rglob("*.yaml"))}
    database = yaml.safe_load(files[DATABASE_FILE])
    parts = urlsplit(market_data_uri)
    netloc = f"{parts.username}:{MASKED_PASSWORD}@{parts.hostname}:{parts.port or 5432}"
    database["sqlalchemy_uri"] = parts._replace(netloc=netloc).geturl()
    files[DATABASE_FILE] = yaml.safe_dump(database, sort_keys=False)
    return files


def zipped(files: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, text in files.items():
            archive.writestr(f"{BUNDLE_ROOT}/{name}", text)
    return buffer.getvalue()


def dashboard_uuids(files: dict[str, str]) -> set[str]:
    return {yaml.safe_load(text)["uuid"] for name, text in files.items() if name.startswith("dashboards/")}


def upgrade_and_init() -> None:
    """``superset db upgrade`` and ``superset init`` in this process."""
    from flask_migrate import upgrade
    from superset.extensions import db

    from superset import appbuilder, security_manager

    started = time.monotonic()
    upgrade()
    appbuilder.add_permissions(update_perms=True)
    security_manager.sync_role_definitions()
    db.session.commit()
    say("init", changed=1, seconds=f"{time.monotonic() - started:.1f}")


def ensure_admin(username: str, password: str) -> None:
    """Creates the administrator, or resets the password when it is not the configured one."""
    from superset.extensions import db
    from werkzeug.security import check_password_hash, generate_password_hash

    from superset import security_manager

    user = security_manager.find_user(username=username)
    if user is None:
        created = security_manager.add_user(
            username, "Platform", "Admin", f"{username}@localhost", security_manager.find_role("Admin"),
            password=password,
        )
        if not created:
            raise SystemExit(f"could not create the Superset administrator {username!r}")
        say("admin", user=username, changed=1)
        return
    if check_password_hash(user.password, password):
        say("admin", user=username, changed=0)
        return
    user.password = generate_password_hash(password)
    db.session.commit()
    say("admin", user=username, changed=1, reason="password-reset")


def import_bundle(files: dict[str, str], reader_password: str, username: str, stamp: Path) -> None:
    """Imports the bundle (overwriting by UUID) unless this exact bundle and password are already in."""
    from flask import g
    from superset.commands.importers.v1.assets import ImportAssetsCommand
    from superset.commands.importers.v1.utils import get_contents_from_bundle
    from superset.extensions import db
    from superset.models.dashboard import Dashboard

    from superset import security_manager

    digest = hashlib.sha256(json.dumps(files, sort_keys=True).encode())
    digest.update(hashlib.sha256(reader_password.encode()).digest())
    fingerprint = digest.hexdigest()
    wanted = dashboard_uuids(files)
    present = {str(uuid) for (uuid,) in db.session.query(Dashboard.uuid).all()}
    if stamp.exists() and stamp.read_text().strip() == fingerprint and wanted <= present:
        say("import", dashboards=len(wanted), changed=0)
        return
    started = time.monotonic()
    with zipfile.ZipFile(io.BytesIO(zipped(files))) as archive:
        contents = get_contents_from_bundle(archive)
    g.user = security_manager.find_user(username=username)
    ImportAssetsCommand(contents, passwords={DATABASE_FILE: reader_password}).run()
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.write_text(fingerprint + "\n")
    say("import", dashboards=len(wanted), changed=1, seconds=f"{time.monotonic() - started:.1f}")


def recipients() -> list[dict]:
    """The webhook (SUPERSET_ALERT_WEBHOOK_URL) and the e-mail (SMTP_MAIL_TO, set only with SMTP_HOST)."""
    found = []
    if os.environ.get("SUPERSET_ALERT_WEBHOOK_URL"):
        found.append({"type": "Webhook", "recipient_config_json": {"target": os.environ["SUPERSET_ALERT_WEBHOOK_URL"]}})
    if os.environ.get("SMTP_MAIL_TO"):
        found.append({"type": "Email", "recipient_config_json": {"target": os.environ["SMTP_MAIL_TO"]}})
    return found


def schedule_payloads(spec: dict, ids: dict[str, int], owner_id: int, grace_s: int) -> list[dict]:
    """REST payloads of the alerts (text, every minute, with a grace period) and the reports (CSV) in ``spec``."""
    common = {"active": True, "timezone": "UTC", "working_timeout": ALERT_WORKING_TIMEOUT_S,
              "log_retention": LOG_RETENTION_DAYS, "grace_period": grace_s, "recipients": recipients(),
              "owners": [owner_id], "force_screenshot": False}
    alerts = [{**common, "type": "Alert", "name": alert["name"], "description": alert["description"],
               "crontab": ALERT_CRONTAB, "sql": alert["sql"], "database": ids[spec["database"]],
               "chart": ids[alert["chart"]], "validator_type": "operator",
               "validator_config_json": {"op": ">", "threshold": float(alert["above"])}, "report_format": "TEXT"}
              for alert in spec.get("alerts", [])]
    reports = [{**common, "type": "Report", "name": report["name"], "description": report["description"],
                "crontab": report["crontab"], "chart": ids[report["chart"]], "report_format": "CSV"}
               for report in spec.get("reports", [])]
    return alerts + reports


def comparable(record: dict) -> dict:
    """A report schedule as GET returns it, in the shape of a POST payload (ids, parsed JSON, sorted lists)."""
    shaped = dict(record)
    for relation in ("database", "chart"):
        shaped[relation] = (record.get(relation) or {}).get("id")
    shaped["owners"] = sorted(owner["id"] for owner in record.get("owners", []))
    shaped["recipients"] = sorted(
        ({"type": r["type"], "recipient_config_json": json.loads(r["recipient_config_json"])}
         for r in record.get("recipients", [])), key=json.dumps)
    config = record.get("validator_config_json")
    shaped["validator_config_json"] = json.loads(config) if isinstance(config, str) else config
    return shaped


class RestClient:
    """Superset's REST API in this process (Flask's test client), logged in as the administrator."""

    def __init__(self, app: object, username: str, password: str) -> None:
        self.client = app.test_client()
        login = self.client.post("/api/v1/security/login", json={
            "username": username, "password": password, "provider": "db", "refresh": False})
        if login.status_code != 200:
            raise SystemExit(f"REST login as {username!r} failed: HTTP {login.status_code}")
        # Over HTTPS (SECURE=1) Flask-WTF also wants a same-origin Referer; the test client's host is localhost.
        self.headers = {"Authorization": f"Bearer {login.json['access_token']}",
                        "Referer": f"{app.config['PREFERRED_URL_SCHEME']}://localhost/"}
        self.headers["X-CSRFToken"] = self.call("GET", "/api/v1/security/csrf_token/")["result"]

    def call(self, method: str, path: str, payload: dict | None = None) -> dict:
        response = self.client.open(path, method=method, json=payload, headers=self.headers)
        if response.status_code not in (200, 201):
            body = response.get_data(as_text=True)[:500]
            raise SystemExit(f"{method} {path} failed: HTTP {response.status_code} {body}")
        return response.json


def chart_query_context(chart_id: int, datasource_id: int, params: str) -> str:
    """The query context the chart's front end would save (gauge or table), so that the worker reads a
    chart's data as text or CSV from the chart data API; without one Superset takes a browser screenshot
    to make it. The bundle's charts carry none."""
    form = json.loads(params)
    where = " AND ".join(f"({f['sqlExpression']})" for f in form.get("adhoc_filters", [])
                         if f.get("expressionType") == "SQL")
    query = {"filters": [], "extras": {"having": "", "where": where}, "orderby": [],
             "row_limit": form.get("row_limit", 1000)}
    if form["viz_type"] == "table":
        query |= {"columns": form["all_columns"], "metrics": []}
    else:
        query |= {"columns": [], "metrics": [form["metric"]]}
    return json.dumps({"datasource": {"id": datasource_id, "type": "table"}, "force": False, "queries": [query],
                       "form_data": {**form, "slice_id": chart_id}, "result_format": "json", "result_type": "full"},
                      sort_keys=True)


def ensure_alerts(app: object, spec_path: Path, username: str, password: str, grace_s: int) -> None:
    """Creates the alerts and reports of ``spec_path`` by name, updates those that differ; same ids on re-runs."""
    from superset.extensions import db
    from superset.models.core import Database
    from superset.models.slice import Slice

    from superset import security_manager

    spec = yaml.safe_load(spec_path.read_text())
    with app.app_context():
        uuids = [spec["database"], *(item["chart"] for key in ("alerts", "reports") for item in spec.get(key, []))]
        ids = {str(uuid): id_ for model in (Database, Slice)
               for id_, uuid in db.session.query(model.id, model.uuid).filter(model.uuid.in_(uuids))}
        missing = sorted(set(uuids) - set(ids))
        if missing:
            raise SystemExit(f"{spec_path.name}: no chart or database with uuid {', '.join(missing)} in the bundle")
        owner_id = security_manager.find_user(username=username).id
        charts = db.session.query(Slice.id, Slice.datasource_id, Slice.params, Slice.query_context).filter(
            Slice.uuid.in_(uuids)).all()
    api = RestClient(app, username, password)
    contexts = 0
    for chart_id, datasource_id, params, saved in charts:
        wanted_context = chart_query_context(chart_id, datasource_id, params)
        if saved != wanted_context:
            api.call("PUT", f"/api/v1/chart/{chart_id}", {"query_context": wanted_context,
                                                           "query_context_generation": True})
            contexts += 1
    query = prison.dumps({"columns": ["id", "name"], "page_size": 100})
    existing = {row["name"]: row["id"] for row in api.call("GET", f"/api/v1/report/?q={query}")["result"]}
    created = updated = 0
    for payload in schedule_payloads(spec, ids, owner_id, grace_s):
        if payload["name"] not in existing:
            api.call("POST", "/api/v1/report/", payload)
            created += 1
            continue
        report_id = existing[payload["name"]]
        current = comparable(api.call("GET", f"/api/v1/report/{report_id}")["result"])
        wanted = {**payload, "recipients": sorted(payload["recipients"], key=json.dumps)}
        if any(current.get(key) != wanted[key] for key in COMPARED_FIELDS if key in payload):
            api.call("PUT", f"/api/v1/report/{report_id}", payload)
            updated += 1
    say("alerts", schedules=len(spec.get("alerts", [])) + len(spec.get("reports", [])), created=created,
        updated=updated, query_contexts=contexts, changed=int(bool(created or updated or contexts)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bundle", type=Path, required=True, help="folder of the export bundle's YAML")
    parser.add_argument("--stamp", type=Path, required=True, help="file holding the imported bundle's fingerprint")
    parser.add_argument("--init", action="store_true", help="run the schema upgrade and the role sync first")
    parser.add_argument("--alerts", type=Path, help="alerts and reports to create (superset/alerts.yaml)")
    args = parser.parse_args(argv)

    from superset.app import create_app

    app = create_app()
    with app.app_context(), app.test_request_context():
        if args.init:
            upgrade_and_init()
        username = env("SUPERSET_ADMIN_USER")
        ensure_admin(username, env("SUPERSET_ADMIN_PASSWORD"))
        files = bundle_files(args.bundle, env("SUPERSET_MARKET_DATA_URI"))
        import_bundle(files, env("SUPERSET_READER_PASSWORD"), username, args.stamp)
    if args.alerts:
        ensure_alerts(app, args.alerts, username, env("SUPERSET_ADMIN_PASSWORD"), int(env("SUPERSET_ALERT_GRACE_S")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
