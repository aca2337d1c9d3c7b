#!/usr/bin/env bash
# The PostgreSQL standby of compose.yaml (service db2), run as root in the
# official image. On its first start it copies the primary (db1) with
# pg_basebackup and follows it as the standby that db1's
# synchronous_standby_names names (application_name db2); on every start it
# then hands over to the image's own entrypoint, which runs PostgreSQL as
# the postgres user.
set -euo pipefail

primary=db1
user=${POSTGRES_USER:-samverkan}
passfile=/var/lib/postgresql/.pgpass

# The password of the Compose secret db_password, in a pgpass file only the
# postgres user can read (libpq ignores one that others can read). The file
# is outside the data directory and written again at every start.
password=$(cat /run/secrets/db_password)
password=${password//\\/\\\\}
password=${password//:/\\:}
(umask 077 && printf '%s:5432:*:%s:%s\n' "$primary" "$user" "$password" >"$passfile")
chown postgres:postgres "$passfile"

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    install -d -o postgres -g postgres -m 700 "$PGDATA"
    attempt=1
    # db1 is healthy before db2 starts (depends_on); retry a little anyway.
    until gosu postgres env PGPASSFILE="$passfile" pg_basebackup --host="$primary" --port=5432 \
        --username="$user" --no-password --pgdata="$PGDATA" --wal-method=stream \
        --checkpoint=fast; do
        if [ "$attempt" -ge 30 ]; then
            echo "standby: no copy of $primary after $attempt attempts" >&2
            exit 1
        fi
        attempt=$((attempt + 1))
        sleep 2
    done
    # Written here rather than by pg_basebackup -R, which would copy the
    # password into the data directory; libpq reads it from the passfile.
    cat >>"$PGDATA/postgresql.auto.conf" <<CONF
primary_conninfo = 'host=$primary port=5432 user=$user application_name=db2 passfile=$passfile'
# Once promoted, this server has no standby of its own to wait for.
synchronous_standby_names = ''
CONF
    gosu postgres touch "$PGDATA/standby.signal"
fi

exec docker-entrypoint.sh postgres "$@"
