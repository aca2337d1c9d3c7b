#!/bin/sh
# The PostgreSQL primary of compose.yaml (service db1): run once by the
# official image's entrypoint, from /docker-entrypoint-initdb.d, when the
# data directory is first made. It lets the standby (db2) replicate as the
# broker's database user, and makes db2 the synchronous standby: from the
# next start on, a commit returns only once db2 has it on disk.
#
# It may be sourced instead of run (when the file lost its execute bit), so
# it neither sets shell options nor exits.

# Replication connections from the containers' network, with the password.
echo "host replication $POSTGRES_USER samenet scram-sha-256" >>"$PGDATA/pg_hba.conf"

# Through ALTER SYSTEM, in force from the next start: the server that runs
# this script waits for no standby, or creating the database would hang.
psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -c "ALTER SYSTEM SET synchronous_standby_names = 'FIRST 1 (db2)'"
