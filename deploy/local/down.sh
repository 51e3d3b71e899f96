#!/usr/bin/env bash
# Stop the local services that up.sh started, keeping their data in .local/.
# A server up.sh merely found running (Debian's own postgres cluster, a redis
# started by its package, ...) is not up.sh's to stop and is left alone:
# only the project cluster in .local/postgres and the processes recorded in
# .local/run/*.pid are touched.
set -euo pipefail

script_dir=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=common.sh
. "$script_dir/common.sh"

[[ $EUID -eq 0 ]] || die "run as root (postgres is stopped as the postgres user)"

stopped=0

# stop_recorded PIDFILE NAME: stop the process in PIDFILE if it is still NAME.
stop_recorded() {
	local pid
	if pid=$(pid_of "$1" "$2"); then
		say "$2: stopping (pid $pid)"
		stop_pid "$pid" "$2"
		stopped=$((stopped + 1))
	fi
	rm -f "$1"
}

stop_recorded "$garage_pidfile" garage
stop_recorded "$redis_pidfile" redis-server

if [[ -f $pg_data/PG_VERSION ]] && pg_bin=$(pg_bindir) && pg_local_running "$pg_bin"; then
	say "postgres: stopping the project-local cluster"
	# fast: disconnect clients (e.g. a forgotten test run) instead of waiting.
	as_postgres "$pg_bin/pg_ctl" -D "$pg_data" -m fast -w -t 60 -s stop
	stopped=$((stopped + 1))
fi

if ((stopped == 0)); then
	say "nothing started by up.sh is running"
else
	say "stopped $stopped service(s); data kept in $local_dir"
fi
