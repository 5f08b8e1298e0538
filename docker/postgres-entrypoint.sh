#!/bin/sh
# docker-compose's postgres: PostgreSQL refuses a key that others may read, and the shared volume's files are
# the platform user's, so the server certificate and key are copied (0600, owned by postgres) where only the
# server reads them; then the image's own entrypoint (initdb on first start, then the server as postgres).
set -eu
install -d -o postgres -g postgres -m 0700 /var/lib/postgresql/tls
install -o postgres -g postgres -m 0600 /platform/tls/server.crt /platform/tls/server.key /var/lib/postgresql/tls/
exec docker-entrypoint.sh "$@"
