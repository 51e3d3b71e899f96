#!/usr/bin/env bash
# Set up everything and run the server: local services (see up.sh), a release build,
# database migrations, then `canopy serve` in the foreground (Ctrl-C stops it).
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"

command -v cargo >/dev/null || {
	echo "run.sh: cargo is missing; install a Rust toolchain (rustup) first" >&2
	exit 1
}

if [[ $EUID -eq 0 ]]; then
	deploy/local/up.sh
else
	sudo deploy/local/up.sh
fi
# shellcheck source=env.sh
. deploy/local/env.sh

echo "==> building canopy (release)"
cargo build --release --locked -p api --bin canopy
echo "==> migrating the database"
target/release/canopy migrate
bind=${CANOPY_BIND:-127.0.0.1:8080}
echo "==> Canopy on http://$bind (Swagger UI: http://$bind/docs, spec: http://$bind/openapi.json)"
exec target/release/canopy serve
