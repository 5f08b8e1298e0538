# One image for every Python service of the platform (producer, consumer, Dagster, Spark, migrations).
FROM python:3.11-slim-bookworm

RUN apt-get update \
 && apt-get install -y --no-install-recommends openjdk-17-jre-headless maven procps \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml README.md ./
COPY crypto_platform crypto_platform
COPY local_stack local_stack
COPY streaming_services streaming_services
COPY crypto_assets crypto_assets
COPY sql sql
COPY bench bench
COPY superset superset
COPY workspace.yaml dagster.yaml ./
RUN pip install --no-cache-dir . \
 && ln -s "$(python -c 'import pyspark, os; print(os.path.dirname(pyspark.__file__))')/bin/spark-class" /usr/local/bin/spark-class

# DAGSTER_HOME holds the instance config; a new named volume mounted on /data starts with this content.
# ca, tls and secrets: mount points of docker-compose's shared volumes, which take their owner and 0700 from here.
RUN useradd --create-home --uid 10001 platform \
 && mkdir -p /data/dagster /data/ca /data/tls /data/secrets && cp dagster.yaml /data/dagster/dagster.yaml \
 && chmod 700 /data/ca /data/tls /data/secrets && chown -R platform /data
USER platform
ENV STATE_DIR=/data BIND_HOST=0.0.0.0 DAGSTER_HOME=/data/dagster SPARK_NO_DAEMONIZE=1 \
    SPARK_WORKER_DIR=/data/spark-work

# Kafka's jars and the JDBC driver, cached in this user's home, where the services look for them.
RUN python -c "from local_stack.jars import ensure_jars; ensure_jars()" && rm -rf /home/platform/.m2

# Superset's own virtual environment (its pins conflict with Dagster's), the one `make up` installs.
RUN python -m local_stack.superset --install-only && rm -rf /home/platform/.cache/pip
