"""``crypto-platform``: the local stack's command line (``make up``, ``make down``, ``make status`` call it)."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime

from crypto_platform.logs import configure_logging
from crypto_platform.settings import PlatformSettings, SettingsError
from local_stack.backup_plan import BackupError, parse_target, render_backups
from local_stack.backups import BackupStore
from local_stack.jars import JarsError
from local_stack.kafka_users import rotate_password
from local_stack.migrations import MigrationError, apply_migrations
from local_stack.postgres import ServerAccount
from local_stack.processes import StackError
from local_stack.restore import restore_platform
from local_stack.stack import LocalStack
from local_stack.status import collect, render

EXIT_FAILURE = 1
EXIT_USAGE = 2


def _say(text: str) -> None:
    print(text, flush=True)


def cmd_up(stack: LocalStack, _: argparse.Namespace) -> int:
    started = time.monotonic()
    stack.up(progress=lambda step: _say(f"  {step}"))
    _say(f"platform up in {time.monotonic() - started:.1f} s (state in {stack.settings.state_dir})")
    return cmd_status(stack, _)


def cmd_down(stack: LocalStack, _: argparse.Namespace) -> int:
    stack.down()
    _say("platform stopped; data kept in " + str(stack.settings.state_dir))
    return 0


def cmd_status(stack: LocalStack, _: argparse.Namespace) -> int:
    _say(render(collect(stack)))
    _say(f"{'logs:':<16}{stack.settings.state_dir / 'logs'} (make logs SERVICE=name)")
    return 0


def cmd_migrate(stack: LocalStack, _: argparse.Namespace) -> int:
    applied = apply_migrations(stack.settings.database_url)
    _say("applied: " + (", ".join(applied) if applied else "nothing (schema up to date)"))
    return 0


def cmd_bootstrap(stack: LocalStack, _: argparse.Namespace) -> int:
    stack.bootstrap()
    _say(f"schema and topic {stack.settings.kafka_topic} ready")
    return 0


def cmd_logs(stack: LocalStack, args: argparse.Namespace) -> int:
    log_dir = stack.settings.state_dir / "logs"
    known = sorted(p.stem for p in log_dir.glob("*.log"))
    if args.service:
        if args.service not in known:
            _say(f"no log for service {args.service!r}; known: {', '.join(known) or 'none yet (run make up)'}")
            return EXIT_USAGE
        files = [log_dir / f"{args.service}.log"]
    else:
        files = [log_dir / f"{name}.log" for name in known]
    if not files:
        _say(f"no logs in {log_dir} yet; run make up")
        return EXIT_USAGE
    follow = ["-F"] if args.follow else []
    os.execvp("tail", ["tail", "-n", str(args.lines), *follow, *map(str, files)])


def cmd_clean(stack: LocalStack, args: argparse.Namespace) -> int:
    state_dir = stack.settings.state_dir
    if not state_dir.exists():
        _say(f"nothing to delete: {state_dir} does not exist")
        return 0
    if not args.force:
        if not sys.stdin.isatty():
            _say(f"refusing to delete {state_dir} without confirmation; run with FORCE=1 (make clean FORCE=1)")
            return EXIT_USAGE
        if input(f"delete {state_dir} and all its data? [y/N] ").strip().lower() != "y":
            _say("kept")
            return 0
    stack.down()
    shutil.rmtree(state_dir)
    _say(f"deleted {state_dir}")
    return 0


def cmd_backup(stack: LocalStack, _: argparse.Namespace) -> int:
    store = BackupStore(stack.settings)
    embedded = stack.settings.embedded_postgres
    account = ServerAccount.for_current_user() if embedded else ServerAccount(os.getuid(), os.getgid())
    backup = store.take(account)
    took = (backup.finished_at - backup.started_at).total_seconds()
    _say(f"base backup {backup.path.name} taken in {took:.1f} s into {backup.path}")
    deleted, wal = store.prune(stack.settings.backup_keep)
    if deleted or wal:
        _say(f"BACKUP_KEEP={stack.settings.backup_keep}: deleted {len(deleted)} older base backups and {wal} WAL files")
    return cmd_backups(stack, _)


def cmd_backups(stack: LocalStack, _: argparse.Namespace) -> int:
    store = BackupStore(stack.settings)
    wal = store.wal_files()
    _say(render_backups(store.backups(), sum(path.stat().st_size for path in wal), len(wal)))
    return 0


def cmd_restore(stack: LocalStack, args: argparse.Namespace) -> int:
    target = parse_target(args.time, datetime.now(UTC))
    report = restore_platform(stack, target, progress=lambda step: _say(f"  {step}"))
    _say(f"restored to {report.target.isoformat() if report.target else 'the latest state'} from base backup "
         f"{report.backup.path.name} in {report.seconds:.1f} s; the replaced data folder is kept in {report.replaced}")
    offsets = ", ".join(f"{p}:{o}" for p, o in report.rewind.offsets.items())
    _say("consumer group rewound to offsets " + (offsets or "none"))
    for name, moved in report.rewind.producer.items():
        _say(f"producer {name} rewound: " + ", ".join(f"{s} {a} -> {b}" for s, (a, b) in moved.items()))
    if report.canceled_runs:
        _say("Dagster runs in flight at that instant, marked canceled: " + ", ".join(report.canceled_runs))
    _say("started again: " + (", ".join(report.restarted) or "nothing was running (make up starts it)"))
    return 0


def cmd_rotate_kafka_password(stack: LocalStack, args: argparse.Namespace) -> int:
    rotate_password(stack, args.user, say=lambda step: _say(f"  {step}"))
    _say(f"Kafka user {args.user}: password rotated")
    return 0


def cmd_config(stack: LocalStack, args: argparse.Namespace) -> int:
    if args.markdown:
        _say(PlatformSettings.docs_table())
        return 0
    docs = [(variable, default.replace("`", ""), meaning.replace("`", ""))
            for variable, default, meaning in PlatformSettings.docs()]
    inactive = stack.settings.inactive()
    width = max(len(default) for _, default, _ in docs) + 2
    for variable, default, meaning in docs:
        note = f"  [no effect now: {inactive[variable]}]" if variable in inactive else ""
        _say(f"{variable:<26}{default:<{width}}{meaning}{note}")
    return 0


COMMANDS = {
    "up": (cmd_up, "start every server and service (idempotent)"),
    "down": (cmd_down, "stop what `up` started, keep the data"),
    "status": (cmd_status, "each service's state, port and pid, and row counts"),
    "migrate": (cmd_migrate, "apply pending SQL migrations"),
    "bootstrap": (cmd_bootstrap, "apply migrations and create topics on running servers (docker-compose)"),
    "logs": (cmd_logs, "show and follow the services' logs"),
    "clean": (cmd_clean, "delete the state folder (asks, or --force)"),
    "config": (cmd_config, "list every setting with its default"),
    "backup": (cmd_backup, "take a base backup of PostgreSQL into BACKUP_DIR, apply BACKUP_KEEP, list them"),
    "backups": (cmd_backups, "list the base backups and the WAL archive"),
    "restore": (cmd_restore, "restore PostgreSQL to the latest state or to --time, then carry on"),
    "rotate-kafka-password": (cmd_rotate_kafka_password,
                              "SECURE=1: a new SCRAM password for one Kafka user, then restart what uses it"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="crypto-platform", description="Run the crypto market data platform locally.")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, (_, help_text) in COMMANDS.items():
        sub = commands.add_parser(name, help=help_text)
        if name == "config":
            sub.add_argument("--markdown", action="store_true", help="the README's settings table")
        if name == "clean":
            sub.add_argument("--force", action="store_true", help="do not ask")
        if name == "restore":
            sub.add_argument("--time", default="", help="ISO instant to restore to (default: the latest state)")
        if name == "rotate-kafka-password":
            sub.add_argument("user", help="binance-producer, prices-consumer or platform-admin")
        if name == "logs":
            sub.add_argument("service", nargs="?", help="one service (default: all)")
            sub.add_argument("-n", "--lines", type=int, default=50, help="lines to show first")
            sub.add_argument("--no-follow", dest="follow", action="store_false", help="print and exit")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = PlatformSettings.from_env()
    except SettingsError as exc:
        print(f"crypto-platform: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    # LOG_LEVEL is the services' level; the CLI speaks through its progress lines and one error line, and
    # logs only warnings (everything at LOG_LEVEL=DEBUG).
    configure_logging("DEBUG" if settings.log_level == "DEBUG" else "WARNING")
    # Connection attempts while servers start are expected; the stack reports its own failures.
    logging.getLogger("kafka").setLevel(logging.CRITICAL)
    # Dagster's storage checks its schema through alembic, which logs each plugin it loads at INFO.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    handler = COMMANDS[args.command][0]
    try:
        return handler(LocalStack(settings), args)
    except (StackError, MigrationError, JarsError, BackupError) as exc:
        print(f"crypto-platform: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
