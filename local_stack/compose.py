"""Entry points of docker-compose.yml's services that run the local stack's own code in the foreground.

``secrets`` is the one-shot ``certificates`` service, which every other service waits for: the platform CA
and server certificate (``certificates``; the CA's key stays in ``STATE_DIR/ca``, a volume of this service
only, and ``STATE_DIR/tls`` gets the rest) and every generated secret of ``STATE_DIR/secrets`` (database
roles, Kafka's SCRAM users, Redis, Spark Connect's token, the Dagster UI's login), so the services can
mount both read-only. ``kafka`` (``--node I`` for ``kafka-I`` with ``KAFKA_BROKERS=3``) is a Kafka node with
the local stack's properties (SASL_SSL, ACLs), ``dagster`` the guarded webserver and its daemon with the
local stack's environment (storage as role ``dagster``).
"""

from __future__ import annotations

import argparse
import logging

from crypto_platform.credentials import (
    KAFKA_PRINCIPALS,
    RUNTIME_ROLES,
    dagster_ui_password,
    kafka_password,
    role_password,
    spark_connect_token,
)
from crypto_platform.logs import configure_logging
from crypto_platform.settings import PlatformSettings
from local_stack.certificates import ensure_certificates, platform_hosts, publish_certificates
from local_stack.kafka_cluster import KafkaCluster
from local_stack.redis_server import redis_password
from local_stack.stack import dagster_service

CA_FOLDER = "ca"  # under STATE_DIR: the CA's key, in the one-shot service's own volume

log = logging.getLogger(__name__)


def make_secrets(settings: PlatformSettings) -> None:
    """Certificates and secrets, each made once and kept (running it again changes nothing that is valid)."""
    issued = ensure_certificates(settings.state_dir / CA_FOLDER, platform_hosts(settings))
    publish_certificates(issued, settings.tls_ca_cert.parent)
    for role in RUNTIME_ROLES:
        role_password(settings, role)
    for principal in KAFKA_PRINCIPALS:
        kafka_password(settings, principal)
    redis_password(settings)
    spark_connect_token(settings)
    dagster_ui_password(settings)
    log.info("certificates and secrets ready", extra={"tls": str(settings.tls_ca_cert.parent),
                                                      "hosts": ",".join(platform_hosts(settings))})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m local_stack.compose",
                                     description="A docker-compose service of the platform, in the foreground.")
    parser.add_argument("service", choices=("secrets", "kafka", "dagster"))
    parser.add_argument("--node", type=int, default=1, help="the Kafka node to run (1 to KAFKA_BROKERS)")
    args = parser.parse_args(argv)
    settings = PlatformSettings.from_env()
    configure_logging(settings.log_level)
    if args.service == "secrets":
        make_secrets(settings)
    elif args.service == "kafka":
        KafkaCluster(settings).run_node_in_foreground(args.node)
    else:
        dagster_service(settings).run_in_foreground()


if __name__ == "__main__":
    main()
