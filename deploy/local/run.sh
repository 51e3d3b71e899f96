#!/usr/bin/env bash
# Set up everything and run the server: local services (see up.sh), a release build,
# database migrations, then `canopy serve` in the foreground (Ctrl-C stops it).
set -euo pipefail

script_dir=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=common.sh
. "$script_dir/common.sh"
cd "$repo_root"

require_cargo
services_up

echo "==> building canopy (release)"
cargo build --release --locked -p api --bin canopy
echo "==> migrating the database"
target/release/canopy migrate
bind=${CANOPY_BIND:-127.0.0.1:8080}
echo "==> Canopy on http://$bind (Swagger UI: http://$bind/docs, spec: http://$bind/openapi.json)"
echo "    metrics on http://${CANOPY_METRICS_BIND:-127.0.0.1:9090}/metrics"
exec target/release/canopy serve
