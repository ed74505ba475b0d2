# Source this: starts a throwaway PostgreSQL server on loopback for the tests and exports
# WORKBENCH_TEST_POSTGRES; `stop_postgres` stops it and removes its data.
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
PGPORT=${PGPORT:-54329}
PGDATA_DIR=$(mktemp -d /tmp/workbench-pg.XXXXXX)
chown postgres "$PGDATA_DIR"
su postgres -s /bin/sh -c "$PGBIN/initdb -D $PGDATA_DIR/data -A trust -U postgres >/dev/null"
# Superuser `postgres` connects without a password; every other role must give its password
# (tests/test_scale.py creates one, to check that a password never reaches a file or argv).
printf '%s\n' "local all all trust" "host all postgres 127.0.0.1/32 trust" \
  "host all all 127.0.0.1/32 scram-sha-256" > "$PGDATA_DIR/data/pg_hba.conf"
su postgres -s /bin/sh -c "$PGBIN/pg_ctl -D $PGDATA_DIR/data -w -l $PGDATA_DIR/log \
  -o '-c listen_addresses=127.0.0.1 -p $PGPORT -k $PGDATA_DIR -c max_connections=100' start >/dev/null"
su postgres -s /bin/sh -c "$PGBIN/createdb -h 127.0.0.1 -p $PGPORT -U postgres workbench_test"
export WORKBENCH_TEST_POSTGRES="postgresql://postgres@127.0.0.1:$PGPORT/workbench_test"
echo "PostgreSQL running: $WORKBENCH_TEST_POSTGRES"

stop_postgres() {
  su postgres -s /bin/sh -c "$PGBIN/pg_ctl -D $PGDATA_DIR/data -m fast stop >/dev/null" || true
  rm -rf "$PGDATA_DIR"
}
