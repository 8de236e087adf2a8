#!/usr/bin/env bash
# Makes sure a PostgreSQL server (initdb, postgres) is installed (see ensure-apt.sh).
exec "$(dirname "$0")/ensure-apt.sh" PostgreSQL "ls /usr/lib/postgresql/*/bin/initdb" postgresql
