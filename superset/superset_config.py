"""Superset's configuration for the platform, loaded through SUPERSET_CONFIG_PATH.

Everything that differs per machine or is secret comes from the environment, which the local stack
(``local_stack/superset.py``) or docker-compose provides; there is no default secret or password here,
so a Superset started without them fails at once instead of running with a guessable key.
"""

from __future__ import annotations

import os
import shutil
from datetime import timedelta
from urllib.parse import urlsplit

from celery.schedules import crontab


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
# With SECURE=1 gunicorn speaks TLS only: the session cookie never travels in clear, and links say https.
HTTPS = os.environ.get("SUPERSET_HTTPS") == "1"
SESSION_COOKIE_SECURE = HTTPS
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
PREFERRED_URL_SCHEME = "https" if HTTPS else "http"

# Alerts & reports run when the local stack or docker-compose gives a Celery broker (Redis).
CELERY_BROKER_URL = os.environ.get("SUPERSET_CELERY_BROKER_URL", "").strip()

FEATURE_FLAGS = {
    "DASHBOARD_NATIVE_FILTERS": True,
    "DASHBOARD_CROSS_FILTERS": True,
    "ALERT_REPORTS": bool(CELERY_BROKER_URL),
    "ALERT_REPORT_WEBHOOK": bool(CELERY_BROKER_URL),
    # An alert sends its name, its text and a link; no headless browser runs on every tick.
    "ALERTS_ATTACH_REPORTS": False,
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

# Alerts & reports: the beat sends `reports.scheduler` every minute, the worker runs it and the executions
# it schedules. superset/celery_beat.py builds the beat from this class alone (no Superset app in it).
CELERY_BEAT_SCHEDULER_EXPIRES = timedelta(minutes=5)


class CeleryConfig:
    broker_url = CELERY_BROKER_URL
    result_backend = CELERY_BROKER_URL
    imports = ("superset.tasks.scheduler",)
    worker_prefetch_multiplier = 1
    task_acks_late = False
    broker_connection_retry_on_startup = True
    beat_schedule = {
        "reports.scheduler": {
            "task": "reports.scheduler",
            "schedule": crontab(minute="*", hour="*"),
            "options": {"expires": int(CELERY_BEAT_SCHEDULER_EXPIRES.total_seconds())},
        },
        "reports.prune_log": {"task": "reports.prune_log", "schedule": crontab(minute=0, hour=0)},
    }


CELERY_CONFIG = CeleryConfig if CELERY_BROKER_URL else None

# The worker fetches a chart's CSV or text from the web server; links in notifications point there too.
WEBDRIVER_BASEURL = os.environ.get("SUPERSET_BASE_URL", "http://127.0.0.1:8088").rstrip("/") + "/"
WEBDRIVER_BASEURL_USER_FRIENDLY = WEBDRIVER_BASEURL
# Plain HTTP only when the configured webhook is a loopback receiver (the settings refuse other http:// URLs).
ALERT_REPORTS_WEBHOOK_HTTPS_ONLY = urlsplit(os.environ.get("SUPERSET_ALERT_WEBHOOK_URL", "")).scheme != "http"
ALERT_MINIMUM_INTERVAL = int(timedelta(minutes=1).total_seconds())
EMAIL_REPORTS_SUBJECT_PREFIX = "[Crypto platform] "

# E-mail through SMTP_* when SMTP_HOST is given (the local stack passes them; see the README).
SMTP_HOST = os.environ.get("SMTP_HOST", "localhost")
SMTP_PORT = int(os.environ.get("SMTP_PORT", "25"))
SMTP_STARTTLS = os.environ.get("SMTP_STARTTLS", "1") == "1"
SMTP_SSL = os.environ.get("SMTP_SSL", "0") == "1"
SMTP_USER = os.environ.get("SMTP_USER", "")
SMTP_PASSWORD = os.environ.get("SMTP_PASSWORD", "")
SMTP_MAIL_FROM = os.environ.get("SMTP_MAIL_FROM", "superset@localhost")

# Reports with a screenshot (PNG/PDF) only where Debian's Chromium and its driver are installed.
if shutil.which("chromium") and shutil.which("chromedriver"):
    WEBDRIVER_TYPE = "chrome"
    WEBDRIVER_OPTION_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                             "--disable-background-networking", "--no-first-run"]
    WEBDRIVER_CONFIGURATION = {"binary_location": shutil.which("chromium"),
                               "service": {"executable_path": shutil.which("chromedriver"), "log_output": "/dev/null"}}
