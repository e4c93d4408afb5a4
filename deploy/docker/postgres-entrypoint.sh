#!/bin/bash
# Start PostgreSQL; on the first start, initialise PGDATA with one database and one owning
# login role per name in POSTGRES_DATABASES (passwords from POSTGRES_PASSWORD_<NAME> or the
# file named by POSTGRES_PASSWORD_<NAME>_FILE). Extra arguments go to `postgres`.
set -euo pipefail

: "${PGDATA:?PGDATA must be set}"
: "${POSTGRES_DATABASES:=}"

password_of() {
    local upper var file
    upper=$(printf '%s' "$1" | tr '[:lower:]-' '[:upper:]_')
    var="POSTGRES_PASSWORD_${upper}"
    file="${var}_FILE"
    if [[ -n "${!file:-}" ]]; then
        cat -- "${!file}"
    elif [[ -n "${!var:-}" ]]; then
        printf '%s' "${!var}"
    else
        echo "postgres-entrypoint: set ${var} or ${file} for database '$1'" >&2
        return 1
    fi
}

if [[ ! -s "$PGDATA/PG_VERSION" ]]; then
    # Check every password before touching PGDATA, so a bad start can simply be retried.
    for name in $POSTGRES_DATABASES; do
        [[ "$name" =~ ^[a-z_][a-z0-9_]*$ ]] || {
            echo "postgres-entrypoint: '$name' is not a plain lower-case identifier" >&2
            exit 2
        }
        password_of "$name" >/dev/null
    done
    mkdir -p "$PGDATA"
    chmod 0700 "$PGDATA"
    initdb --username=postgres --encoding=UTF8 --locale=C.UTF-8 \
        --auth-local=peer --auth-host=scram-sha-256 -D "$PGDATA" >/dev/null
    # Roles log in over the network with their password; the superuser only by socket.
    {
        echo "host all postgres all reject"
        echo "host all all 0.0.0.0/0 scram-sha-256"
        echo "host all all ::/0 scram-sha-256"
    } >>"$PGDATA/pg_hba.conf"
    pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start >/dev/null
    for name in $POSTGRES_DATABASES; do
        psql -v ON_ERROR_STOP=1 -q -U postgres -d postgres -v name="$name" \
            -v pw="$(password_of "$name")" <<'SQL'
CREATE ROLE :"name" LOGIN PASSWORD :'pw';
CREATE DATABASE :"name" OWNER :"name";
REVOKE ALL ON DATABASE :"name" FROM PUBLIC;
GRANT ALL ON DATABASE :"name" TO :"name";
SQL
        echo "postgres-entrypoint: database '$name' owned by role '$name'"
    done
    pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
fi

exec postgres -D "$PGDATA" -c listen_addresses='*' "$@"
