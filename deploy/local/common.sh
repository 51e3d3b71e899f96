# shellcheck shell=bash
# The variables set here are used by the scripts that source this file.
# shellcheck disable=SC2034
# Paths and helpers shared by the scripts in this folder (sourced, never executed).

: "${script_dir:?the sourcing script must set script_dir to its own directory}"

# shellcheck source=env.sh
. "$script_dir/env.sh"

deploy_dir=$(cd "$script_dir/.." && pwd)
repo_root=$(cd "$script_dir/../.." && pwd)
local_dir=${CANOPY_LOCAL_DIR:-$repo_root/.local}
# Everything below is handed to daemons that outlive this shell, so it must
# not depend on the caller's working directory.
[[ $local_dir == /* ]] || local_dir=$PWD/$local_dir

log_dir=$local_dir/log
run_dir=$local_dir/run
pg_data=$local_dir/postgres
pg_sock_dir=$run_dir/postgres
redis_dir=$local_dir/redis
redis_pidfile=$run_dir/redis.pid
garage_dir=$local_dir/garage
garage_cfg=$garage_dir/garage.toml
garage_pidfile=$run_dir/garage.pid

# `cargo install` puts garage here, and a root shell (sudo -i, su) often
# lacks it on PATH.
PATH=$PATH:${HOME:-/root}/.cargo/bin

say() { printf '==> %s\n' "$*"; }
die() {
	printf '%s: error: %s\n' "$(basename "$0")" "$*" >&2
	exit 1
}

# Derive hosts/ports/credentials from env.sh so that file stays the only
# place they are written down.
[[ $CANOPY_DATABASE_URL =~ ^postgres(ql)?://([^:@/]+):([^@/]+)@([^:/]+):([0-9]+)/([^/?]+)$ ]] ||
	die "cannot parse CANOPY_DATABASE_URL=$CANOPY_DATABASE_URL"
pg_user=${BASH_REMATCH[2]}
pg_password=${BASH_REMATCH[3]}
pg_host=${BASH_REMATCH[4]}
pg_port=${BASH_REMATCH[5]}
pg_db=${BASH_REMATCH[6]}

[[ $CANOPY_REDIS_URL =~ ^redis://([^:/]+):([0-9]+)/?$ ]] ||
	die "cannot parse CANOPY_REDIS_URL=$CANOPY_REDIS_URL"
redis_host=${BASH_REMATCH[1]}
redis_port=${BASH_REMATCH[2]}

[[ $CANOPY_S3_ENDPOINT =~ ^http://([^:/]+):([0-9]+)/?$ ]] ||
	die "cannot parse CANOPY_S3_ENDPOINT=$CANOPY_S3_ENDPOINT"
s3_host=${BASH_REMATCH[1]}
s3_port=${BASH_REMATCH[2]}

# wait_until SECONDS CMD...: poll CMD until it succeeds; fail after SECONDS.
wait_until() {
	local deadline=$((SECONDS + $1))
	shift
	until "$@"; do
		((SECONDS < deadline)) || return 1
		sleep 0.2
	done
}

# PostgreSQL refuses to run as root. Run from / because initdb and pg_ctl
# fail when the postgres user cannot stat the caller's working directory.
as_postgres() { (cd / && runuser -u postgres -- "$@"); }

# Directory of the PostgreSQL binaries to use: those matching an existing
# project cluster's major version, else the newest installed.
pg_bindir() {
	local dir
	if [[ -f $pg_data/PG_VERSION ]]; then
		dir=/usr/lib/postgresql/$(<"$pg_data/PG_VERSION")/bin
		[[ -x $dir/pg_ctl ]] && echo "$dir"
		return
	fi
	while read -r dir; do
		if [[ -x $dir/initdb && -x $dir/pg_ctl ]]; then
			echo "$dir"
			return 0
		fi
	done < <(compgen -G '/usr/lib/postgresql/*/bin' | sort -rV)
	return 1
}

pg_local_running() {
	[[ -f $pg_data/PG_VERSION ]] &&
		as_postgres "$1/pg_ctl" -D "$pg_data" status >/dev/null 2>&1
}

# pid_of PIDFILE NAME: print the pid recorded in PIDFILE if that process is
# alive and really is NAME (pids get recycled after a container restart).
pid_of() {
	local pid
	[[ -r $1 ]] || return 1
	pid=$(<"$1")
	[[ $pid =~ ^[0-9]+$ ]] || return 1
	[[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$2" ]] || return 1
	pid_gone "$pid" && return 1
	echo "$pid"
}

# A daemon that exited stays a zombie until PID 1 reaps it, and the init of a
# container may be slow to do so: treat a zombie as gone.
pid_gone() {
	kill -0 "$1" 2>/dev/null || return 0
	[[ $(sed -n 's/^.*) \(.\).*$/\1/p' "/proc/$1/stat" 2>/dev/null) == Z ]]
}

# stop_pid PID NAME: SIGTERM, wait for a clean exit (redis saves its dataset
# on the way out), SIGKILL only as a last resort.
stop_pid() {
	kill -TERM "$1" 2>/dev/null || return 0
	if ! wait_until 30 pid_gone "$1"; then
		say "$2: still running after 30s; sending SIGKILL"
		kill -KILL "$1" 2>/dev/null || true
		wait_until 5 pid_gone "$1" || die "$2 (pid $1) would not exit"
	fi
}

# require_cargo: stop with a clear message when there is no Rust toolchain.
require_cargo() {
	command -v cargo >/dev/null || die "cargo is missing; install a Rust toolchain (rustup) first"
}

# services_up: run up.sh, which needs root (through sudo for other users).
services_up() {
	if ((EUID == 0)); then
		"$script_dir/up.sh"
	else
		sudo "$script_dir/up.sh"
	fi
}
