#!/usr/bin/env bash
# The whole test suite, against real local services: starts PostgreSQL, Redis and Garage
# (installing them when absent, see up.sh), then checks formatting, lints and docs and runs every
# test in the workspace. This is the command README.md gives and .ci/run calls.
set -euo pipefail

script_dir=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=common.sh
. "$script_dir/common.sh"
cd "$repo_root"

require_cargo
services_up

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# The docs build too, with every intra-doc link resolving (a broken one is a warning).
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --locked 2>&1 | tee "$log" || status=$?
# cargo prints one "test result" line per test binary, the last often a doc-test run with
# nothing in it; close with the totals.
awk '/^test result:/ { passed += $4; failed += $6 }
     END { printf "tests: %d passed, %d failed\n", passed, failed }' "$log"
exit "$status"
