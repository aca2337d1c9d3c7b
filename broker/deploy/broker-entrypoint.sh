#!/bin/sh
# Entrypoint of the broker image (Dockerfile): started as root, it hands
# the database password to the driver as a pgpass file (PGPASSFILE), then
# runs `samverkan` with the given arguments as the unprivileged user
# samverkan. The password is the Compose secret db_password (compose.yaml);
# without that file, the environment is left as it is (PGPASSWORD or a
# PGPASSFILE of the operator's own).
set -eu

secret=/run/secrets/db_password
if [ "$(id -u)" != 0 ]; then
    exec samverkan "$@"
fi
if [ -f "$secret" ]; then
    # The secret is mounted with the host file's owner and mode; the driver
    # reads a pgpass file only if nobody else can.
    install -d -o samverkan -g samverkan -m 700 /run/samverkan
    escaped=$(sed 's/[\\:]/\\&/g' "$secret")
    (umask 077 && printf '*:*:*:*:%s\n' "$escaped" >/run/samverkan/pgpass)
    chown samverkan:samverkan /run/samverkan/pgpass
    export PGPASSFILE=/run/samverkan/pgpass
fi
HOME=/var/lib/samverkan
export HOME
exec setpriv --reuid=samverkan --regid=samverkan --init-groups -- samverkan "$@"
