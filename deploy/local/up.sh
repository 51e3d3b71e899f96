#!/usr/bin/env bash
# Install (when absent) and start Canopy's local development services:
# PostgreSQL, Redis and Garage (S3), all keeping their data under
# <repo>/.local/ (override with CANOPY_LOCAL_DIR). Endpoints and credentials
# come from env.sh; source that file to use them.
#
# Run as root. Idempotent: whatever is already installed, running and set up
# is left alone, so a second run only makes a few quick checks. It uses no
# systemd or init scripts (dev containers have none): servers are started
# directly and down.sh stops the ones started here.
set -euo pipefail

script_dir=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=common.sh
. "$script_dir/common.sh"

readonly garage_version=2.5.0
# Server-side Garage settings: development-only secrets for a loopback-only
# server. The S3 key itself lives in env.sh.
readonly garage_rpc_secret=2dc73e8a3802b5bbd2bcf53f3353cf30d88582bdd363651137cefa0528097fd9
readonly garage_admin_token=canopy-dev-admin-token
readonly garage_metrics_token=canopy-dev-metrics-token
readonly garage_rpc_port=3901
readonly garage_admin_port=3903

# ---------------------------------------------------------------- apt ----

apt_updated=false
policy_rc=/usr/sbin/policy-rc.d
created_policy_rc=false
remove_policy_rc() {
	if $created_policy_rc; then
		rm -f "$policy_rc"
		created_policy_rc=false
	fi
}
trap remove_policy_rc EXIT

apt_install() {
	say "installing with apt: $*"
	# Debian packages start their default service on install (redis on 6379
	# with data in /var/lib/redis, a postgres cluster in /var/lib/postgresql).
	# We want ours under .local instead, so deny service starts for the
	# duration of the install, the way Debian's Docker images do permanently.
	if [[ ! -e $policy_rc ]]; then
		printf '#!/bin/sh\n# temporary, from canopy deploy/local/up.sh\nexit 101\n' >"$policy_rc"
		chmod 755 "$policy_rc"
		created_policy_rc=true
	fi
	if ! $apt_updated; then
		apt-get update -q >>"$log_dir/apt.log" 2>&1 ||
			die "apt-get update failed; see $log_dir/apt.log"
		apt_updated=true
	fi
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" \
		>>"$log_dir/apt.log" 2>&1 ||
		die "apt-get install $* failed; see $log_dir/apt.log"
	remove_policy_rc
}

# ----------------------------------------------------------- postgres ----

pg_login_ok() {
	command -v psql >/dev/null 2>&1 &&
		PGCONNECT_TIMEOUT=3 psql -X -Atq "$CANOPY_DATABASE_URL" -c 'select 1' >/dev/null 2>&1
}

# The postgres user must be able to reach its data directory through every
# parent, but repos often live under root-only homes. Grant only search (x)
# permission, never read, and say so.
ensure_traversable_by_postgres() {
	local path="" part parts
	as_postgres test -x "$1" && return 0
	IFS=/ read -ra parts <<<"${1#/}"
	for part in "${parts[@]}"; do
		path+=/$part
		if ! as_postgres test -x "$path"; then
			chmod o+x "$path"
			say "postgres: added o+x to $path so the postgres user can reach $1"
		fi
	done
}

pg_start_local() {
	local pg_bin=$1
	# Unix socket paths are limited to 107 bytes; the socket file name adds 14.
	((${#pg_sock_dir} + 14 <= 107)) ||
		die "socket directory path too long ($pg_sock_dir); set CANOPY_LOCAL_DIR to a shorter path"
	ensure_traversable_by_postgres "$local_dir"

	if [[ ! -f $pg_data/PG_VERSION ]]; then
		if [[ -d $pg_data && -n $(ls -A "$pg_data") ]]; then
			die "$pg_data is not empty but holds no cluster (failed initdb?); move it away and re-run"
		fi
		say "postgres: creating a project-local cluster in $pg_data"
		install -d -o postgres -g postgres -m 700 "$pg_data"
		as_postgres "$pg_bin/initdb" -D "$pg_data" -U postgres --encoding=UTF8 --no-locale \
			--auth-local=peer --auth-host=scram-sha-256 >"$log_dir/postgres-initdb.log" 2>&1 ||
			die "initdb failed; see $log_dir/postgres-initdb.log"
	fi

	# Appended once, so a later hand edit below the marker sticks. The socket
	# lives in .local so it cannot collide with a Debian cluster's
	# /var/run/postgresql; tests open many pools, hence max_connections.
	if ! grep -q '^# --- canopy local dev' "$pg_data/postgresql.conf"; then
		cat >>"$pg_data/postgresql.conf" <<-EOF

			# --- canopy local dev (added by deploy/local/up.sh) ---
			listen_addresses = '$pg_host'
			port = $pg_port
			max_connections = 400
			unix_socket_directories = '$pg_sock_dir'
		EOF
	fi

	install -d -o postgres -g postgres -m 755 "$pg_sock_dir"
	touch "$log_dir/postgres.log"
	chown postgres:postgres "$log_dir/postgres.log"
	say "postgres: starting the project-local cluster on $pg_host:$pg_port"
	# -w makes pg_ctl itself poll until the server accepts connections.
	as_postgres "$pg_bin/pg_ctl" -D "$pg_data" -l "$log_dir/postgres.log" -w -t 60 -s start ||
		die "postgres did not start; see $log_dir/postgres.log"
}

# Create or repair the role and database over the server's unix socket, as
# the postgres superuser (peer authentication).
pg_ensure_role_and_db() {
	local pg_bin=$1 socket_dir=$2
	say "postgres: ensuring role '$pg_user' and database '$pg_db'"
	if ! as_postgres "$pg_bin/psql" -X -q -v ON_ERROR_STOP=1 -h "$socket_dir" -p "$pg_port" -d postgres \
		-v role="$pg_user" -v password="$pg_password" -v db="$pg_db" >/dev/null <<-'SQL'
			SELECT format('CREATE ROLE %I', :'role')
			 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'role') \gexec
			-- Tests create roles, schemas and a database per test.
			SELECT format('ALTER ROLE %I WITH LOGIN CREATEROLE CREATEDB PASSWORD %L',
			              :'role', :'password') \gexec
			SELECT format('CREATE DATABASE %I OWNER %I', :'db', :'role')
			 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'db') \gexec
		SQL
	then
		die "could not create role/database over the socket in $socket_dir"
	fi
}

setup_postgres() {
	if pg_login_ok; then
		say "postgres: ready at $pg_host:$pg_port"
		return
	fi

	local pg_bin wanted=postgresql
	if [[ -f $pg_data/PG_VERSION ]]; then
		wanted=postgresql-$(<"$pg_data/PG_VERSION")
	fi
	pg_bin=$(pg_bindir) || {
		apt_install "$wanted"
		pg_bin=$(pg_bindir) || die "no PostgreSQL server binaries under /usr/lib/postgresql"
	}
	id postgres >/dev/null 2>&1 || die "there is no 'postgres' OS user to run the server as"

	local rc=0 socket_dir=$pg_sock_dir
	if pg_local_running "$pg_bin"; then
		: # ours, but the login failed: the role or database needs repair
	else
		"$pg_bin/pg_isready" -q -h "$pg_host" -p "$pg_port" -t 3 || rc=$?
		if ((rc == 0 || rc == 1)); then
			# Typically Debian's own cluster, started by the package install
			# on a machine without a policy-rc.d. Two servers cannot share the
			# port, so put canopy's role into that one.
			say "postgres: another server already listens on $pg_host:$pg_port; using it"
			socket_dir=/var/run/postgresql
		elif (exec 3<>"/dev/tcp/$pg_host/$pg_port") 2>/dev/null; then
			die "$pg_host:$pg_port is taken by something that is not PostgreSQL"
		else
			pg_start_local "$pg_bin"
			# Just restarted an already set-up cluster: nothing to repair.
			pg_login_ok && return
		fi
	fi

	pg_ensure_role_and_db "$pg_bin" "$socket_dir"
	if [[ $socket_dir != "$pg_sock_dir" ]]; then
		local max
		max=$(as_postgres "$pg_bin/psql" -X -Atq -h "$socket_dir" -p "$pg_port" -d postgres \
			-c 'show max_connections')
		((max >= 400)) || say "postgres: warning: that server has max_connections=$max (canopy tests want 400)"
	fi
	pg_login_ok || die "still cannot log in with $CANOPY_DATABASE_URL (check pg_hba.conf allows scram/md5 from $pg_host)"
}

# -------------------------------------------------------------- redis ----

redis_ok() {
	[[ $(timeout 3 redis-cli -h "$redis_host" -p "$redis_port" ping 2>/dev/null) == PONG ]]
}

setup_redis() {
	if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
		apt_install redis-server
	fi
	if redis_ok; then
		say "redis: ready at $redis_host:$redis_port"
		return
	fi

	say "redis: starting on $redis_host:$redis_port"
	mkdir -p "$redis_dir"
	# No config file on purpose: the built-in defaults (RDB snapshots into
	# --dir) plus these flags are all a dev server needs, and Debian's
	# /etc/redis/redis.conf would pull in its own dir and logfile.
	redis-server --daemonize yes --bind "$redis_host" --port "$redis_port" \
		--dir "$redis_dir" --logfile "$log_dir/redis.log" --pidfile "$redis_pidfile" ||
		die "redis-server did not start; see $log_dir/redis.log"
	wait_until 30 redis_ok || die "redis did not answer within 30s; see $log_dir/redis.log"
}

# ------------------------------------------------------------- garage ----

garage_bin=""

cargo_install_garage_running() {
	command -v pgrep >/dev/null && pgrep -f 'cargo install garage' >/dev/null
}
cargo_install_garage_done() { ! cargo_install_garage_running; }

ensure_garage_binary() {
	if garage_bin=$(command -v garage); then return; fi

	# Building takes minutes on a small machine; never run two builds at once.
	if cargo_install_garage_running; then
		say "garage: a 'cargo install garage' is already running; waiting for it (up to 30 min)"
		wait_until 1800 cargo_install_garage_done ||
			die "the other garage build is still running after 30 minutes"
		if garage_bin=$(command -v garage); then return; fi
		say "garage: that build left no binary; building it here"
	fi

	command -v cargo >/dev/null ||
		die "garage is not installed and cargo is missing; install a Rust toolchain (rustup) first"
	# The bundled-libs feature compiles libsodium, zstd and lmdb from C.
	command -v cc >/dev/null || apt_install build-essential
	say "garage: building garage $garage_version with cargo install (about 9 minutes); log: $log_dir/garage-install.log"
	cargo install garage --version "$garage_version" --locked \
		--no-default-features --features bundled-libs,lmdb >>"$log_dir/garage-install.log" 2>&1 ||
		die "cargo install garage failed; see $log_dir/garage-install.log"
	garage_bin=$(command -v garage) || die "cargo install finished but no garage on PATH"
}

garage_config() {
	cat <<-EOF
		# Written by deploy/local/up.sh: edits are overwritten on the next run.
		metadata_dir = "$garage_dir/meta"
		data_dir = "$garage_dir/data"
		db_engine = "lmdb"
		replication_factor = 1

		rpc_bind_addr = "127.0.0.1:$garage_rpc_port"
		rpc_public_addr = "127.0.0.1:$garage_rpc_port"
		rpc_secret = "$garage_rpc_secret"

		[s3_api]
		api_bind_addr = "$s3_host:$s3_port"
		s3_region = "$CANOPY_S3_REGION"
		root_domain = ".s3.garage.localhost"

		[admin]
		api_bind_addr = "127.0.0.1:$garage_admin_port"
		admin_token = "$garage_admin_token"
		metrics_token = "$garage_metrics_token"
	EOF
}

garage_cli() { "$garage_bin" -c "$garage_cfg" "$@"; }

garage_s3_answers() {
	curl -s -o /dev/null --max-time 2 "http://$s3_host:$s3_port/"
}

garage_up() {
	# kill -0 rather than pid_of: for a moment after the fork the process is
	# still setsid/nohup, not yet garage.
	kill -0 "$(<"$garage_pidfile")" 2>/dev/null ||
		die "garage exited during startup; end of $log_dir/garage.log:"$'\n'"$(tail -n 15 "$log_dir/garage.log")"
	garage_s3_answers && garage_cli status >/dev/null 2>&1
}

garage_start() {
	say "garage: starting the server (S3 on $s3_host:$s3_port)"
	mkdir -p "$garage_dir/meta" "$garage_dir/data"
	# setsid + nohup: a session of its own, so the server outlives the shell
	# (and any terminal) that ran up.sh. Not a job-control process group
	# leader here, so setsid does not fork and $! is garage's own pid.
	setsid nohup "$garage_bin" -c "$garage_cfg" server >>"$log_dir/garage.log" 2>&1 </dev/null &
	echo $! >"$garage_pidfile"
	wait_until 60 garage_up || die "garage did not come up within 60s; see $log_dir/garage.log"
}

s3() {
	curl -sS -f --max-time 10 --aws-sigv4 "aws:amz:$CANOPY_S3_REGION:s3" \
		--user "$CANOPY_S3_ACCESS_KEY_ID:$CANOPY_S3_SECRET_ACCESS_KEY" \
		-H 'x-amz-content-sha256: UNSIGNED-PAYLOAD' "$@"
}

setup_garage() {
	ensure_garage_binary
	local version
	version=$("$garage_bin" --version | head -n 1)
	version=${version%% \[*} # drop the "[features: ...]" suffix
	[[ $version =~ [:v]2\. ]] || say "garage: warning: expected Garage 2.x, found '$version'"
	command -v curl >/dev/null || apt_install curl ca-certificates

	mkdir -p "$garage_dir"
	local config config_changed=false
	config=$(garage_config)
	if [[ ! -f $garage_cfg || $(<"$garage_cfg") != "$config" ]]; then
		say "garage: writing $garage_cfg"
		# umask 077: the file holds the RPC secret and admin token.
		(umask 077 && printf '%s\n' "$config" >"$garage_cfg")
		config_changed=true
	fi

	local pid changed=false
	if pid=$(pid_of "$garage_pidfile" garage) && $config_changed; then
		say "garage: restarting to pick up the new config"
		stop_pid "$pid" garage
	fi
	if garage_s3_answers; then
		say "garage: ready at $CANOPY_S3_ENDPOINT ($version)"
	else
		garage_start
		changed=true
	fi

	local out
	out=$(GARAGE=$garage_bin GARAGE_CONFIG_FILE=$garage_cfg sh "$deploy_dir/garage/init.sh") ||
		die "bootstrapping garage failed (is the server on $s3_host:$s3_port the one configured in $garage_cfg?)"
	if [[ -n $out ]]; then
		printf '%s\n' "$out" | sed 's/^garage-init: /==> garage: /'
		changed=true
	fi

	local bucket_url=$CANOPY_S3_ENDPOINT/$CANOPY_S3_BUCKET
	if $changed; then
		# Fresh setup: prove the whole path (signature, key grant, data
		# write) with a real round trip.
		local object=$bucket_url/.canopy-up-check body
		body="canopy up.sh check $(date -u +%FT%TZ)"
		if ! s3 -X PUT --data-binary "$body" "$object" >/dev/null ||
			[[ $(s3 "$object") != "$body" ]] ||
			! s3 -X DELETE "$object" >/dev/null; then
			die "S3 round trip (PUT/GET/DELETE) on $bucket_url failed; see $log_dir/garage.log"
		fi
		say "garage: S3 PUT/GET/DELETE round trip on $bucket_url ok"
	else
		# Steady state: a signed HEAD on the bucket is enough and writes nothing.
		s3 -I -o /dev/null "$bucket_url" || die "signed HEAD on $bucket_url failed"
	fi
}

# --------------------------------------------------------- test tools ----

# The OpenAPI validator the test suite runs over the document, pinned, in a venv of
# its own under .local (nothing installed system-wide but Python itself).
openapi_validator_version=0.9.0

setup_test_tools() {
	local venv=$local_dir/venv
	local installed
	# Read all of pip's output (no `grep -q`, which would close the pipe early and, under
	# pipefail, fail the check and reinstall every time).
	installed=$("$venv/bin/python" -m pip show openapi-spec-validator 2>/dev/null | sed -n 's/^Version: //p' || true)
	if [[ $installed == "$openapi_validator_version" ]]; then
		return
	fi
	if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
		apt_install python3 python3-venv
	fi
	say "installing openapi-spec-validator $openapi_validator_version into $venv"
	python3 -m venv "$venv" >>"$log_dir/venv.log" 2>&1 ||
		die "python3 -m venv failed; see $log_dir/venv.log"
	"$venv/bin/python" -m pip install -q "openapi-spec-validator==$openapi_validator_version" \
		>>"$log_dir/venv.log" 2>&1 ||
		die "pip install openapi-spec-validator failed; see $log_dir/venv.log"
}

# --------------------------------------------------------------- main ----

[[ $EUID -eq 0 ]] || die "run as root (it may apt-get install, and runs postgres as the postgres user)"
umask 022
mkdir -p "$log_dir" "$run_dir"

setup_postgres
setup_redis
setup_garage
setup_test_tools

cat <<EOF

Canopy local services are up (data in $local_dir, logs in $log_dir):
  postgres  $CANOPY_DATABASE_URL
  redis     $CANOPY_REDIS_URL
  s3        $CANOPY_S3_ENDPOINT  region=$CANOPY_S3_REGION bucket=$CANOPY_S3_BUCKET key=$CANOPY_S3_ACCESS_KEY_ID
  garage    admin API http://127.0.0.1:$garage_admin_port (bearer $garage_admin_token)
  tools     $local_dir/venv (the OpenAPI validator the tests run)
Use them with:  . deploy/local/env.sh      Stop them with:  deploy/local/down.sh
EOF
