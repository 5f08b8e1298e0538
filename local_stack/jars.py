"""Artifacts from Maven Central (Kafka's broker, PostgreSQL's JDBC driver, SECURE=1's PostgreSQL server build),
resolved once and cached."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

from crypto_platform.settings import POSTGRESQL_JDBC

POM = Path(__file__).with_name("kafka") / "pom.xml"
JDBC_JAR_PREFIX = "postgresql-"
JDBC_VERSION = POSTGRESQL_JDBC.rsplit(":", 1)[1]


class JarsError(RuntimeError):
    """Maven could not resolve the jars; the message names the log to read."""


def _require_maven() -> None:
    if shutil.which("mvn") is None:
        raise JarsError("Maven (mvn) is not installed; install it with: apt-get install -y maven")


def jars_dir() -> Path:
    """A cache folder keyed by the pom's content and the JDBC driver's version, so a bump resolves afresh."""
    digest = hashlib.sha256(POM.read_bytes() + JDBC_VERSION.encode()).hexdigest()[:12]
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "crypto-platform" / f"jars-{digest}"
    return base


def ensure_jars() -> Path:
    """Returns the folder of runtime jars, running Maven (``~/.m2`` cache) only when it is missing."""
    target = jars_dir()
    if (target / ".complete").exists():
        return target
    _require_maven()
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    log = partial / "maven.log"
    with log.open("w") as out:
        result = subprocess.run(
            ["mvn", "-q", "-B", "-f", str(POM), "dependency:copy-dependencies",
             f"-DoutputDirectory={partial}", "-DincludeScope=runtime", f"-Dpostgresql.jdbc.version={JDBC_VERSION}"],
            stdout=out, stderr=subprocess.STDOUT, check=False,
        )
    if result.returncode != 0:
        kept = target.with_name(target.name + ".failed.log")
        shutil.copy(log, kept)
        raise JarsError(f"Maven could not resolve the jars (exit {result.returncode}); read {kept}")
    (partial / ".complete").touch()
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    return target


def postgresql_jdbc_jar() -> Path:
    """The PostgreSQL JDBC driver that Spark loads to read and write the market data."""
    for jar in sorted(ensure_jars().glob(f"{JDBC_JAR_PREFIX}*.jar")):
        return jar
    raise JarsError(f"no {JDBC_JAR_PREFIX}*.jar in {jars_dir()}; delete that folder and try again")


def maven_artifact(coordinate: str) -> Path:
    """One artifact (``group:artifact:version``, no dependencies) in the ``~/.m2`` cache; its jar's path."""
    group, artifact, version = coordinate.split(":")
    jar = (Path.home() / ".m2" / "repository" / group.replace(".", "/") / artifact / version
           / f"{artifact}-{version}.jar")
    if jar.exists():
        return jar
    _require_maven()
    result = subprocess.run(["mvn", "-q", "-B", "dependency:get", f"-Dartifact={coordinate}", "-Dtransitive=false"],
                            capture_output=True, text=True, check=False)
    if result.returncode != 0 or not jar.exists():
        lines = (result.stdout + result.stderr).strip().splitlines()
        raise JarsError(f"Maven could not fetch {coordinate}: {lines[-1] if lines else f'exit {result.returncode}'}")
    return jar
