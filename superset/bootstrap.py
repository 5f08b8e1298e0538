"""Idempotent Superset bootstrap, run with the Superset virtual environment's Python by the local stack.

One process, one app start: schema upgrade and roles (``--init``), the administrator, then the dashboards
bundle in ``superset/bundle`` imported as Superset's own import does (a zip of the export YAML), with the
read-only database password injected at import. Secrets come from the environment and are never printed.
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

import yaml

BUNDLE_ROOT = "crypto_platform_bundle"
DATABASE_FILE = "databases/crypto_market_data.yaml"
MASKED_PASSWORD = "XXXXXXXXXX"


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bundle", type=Path, required=True, help="folder of the export bundle's YAML")
    parser.add_argument("--stamp", type=Path, required=True, help="file holding the imported bundle's fingerprint")
    parser.add_argument("--init", action="store_true", help="run the schema upgrade and the role sync first")
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
