#!/bin/sh
# Bootstrap a single-node Garage 2.x cluster for Canopy development: give the
# node a role in the layout, import the fixed development access key, create
# the bucket and let the key use it.
#
# Shared by the compose `garage-init` service and deploy/local/up.sh, so it is
# POSIX sh (busybox in the container). Each step looks before it acts: a
# re-run changes nothing and prints nothing; every change made prints one
# "garage-init: ..." line.
#
# The garage CLI talks to the server over RPC; it finds the config through
# GARAGE_CONFIG_FILE (default /etc/garage.toml) and reads the server's node id
# from the metadata_dir named there.
#
# Environment:
#   CANOPY_S3_ACCESS_KEY_ID, CANOPY_S3_SECRET_ACCESS_KEY, CANOPY_S3_BUCKET
#   GARAGE           garage binary            (default: garage on PATH)
#   GARAGE_KEY_NAME  display name of the key  (default: canopy-dev)
#   GARAGE_ZONE, GARAGE_CAPACITY              (default: dc1, 1G)
set -eu

garage=${GARAGE:-garage}
key_id=${CANOPY_S3_ACCESS_KEY_ID:?CANOPY_S3_ACCESS_KEY_ID is not set}
secret=${CANOPY_S3_SECRET_ACCESS_KEY:?CANOPY_S3_SECRET_ACCESS_KEY is not set}
bucket=${CANOPY_S3_BUCKET:?CANOPY_S3_BUCKET is not set}
key_name=${GARAGE_KEY_NAME:-canopy-dev}
zone=${GARAGE_ZONE:-dc1}
capacity=${GARAGE_CAPACITY:-1G}

# Layout: a fresh cluster is at version 0 and stores nothing until a layout
# with at least one node is applied. Re-assigning is harmless, so a run that
# died between assign and apply is simply completed here.
layout_version=$("$garage" layout show |
	sed -n 's/^Current cluster layout version: \([0-9][0-9]*\)$/\1/p')
case $layout_version in
'')
	echo "garage-init: could not read the layout version from 'garage layout show'" >&2
	exit 1
	;;
0)
	node_id=$("$garage" node id -q | cut -d@ -f1)
	"$garage" layout assign -z "$zone" -c "$capacity" "$node_id" >/dev/null
	"$garage" layout apply --version 1 >/dev/null
	echo "garage-init: applied a single-node layout (node $(echo "$node_id" | cut -c1-16), zone $zone, capacity $capacity)"
	;;
esac

# Import rather than create: Canopy's dev config and tests hard-code this key.
if ! "$garage" key info "$key_id" >/dev/null 2>&1; then
	"$garage" key import --yes "$key_id" "$secret" -n "$key_name" >/dev/null
	echo "garage-init: imported access key $key_id ($key_name)"
fi

if ! bucket_info=$("$garage" bucket info "$bucket" 2>/dev/null); then
	"$garage" bucket create "$bucket" >/dev/null
	echo "garage-init: created bucket $bucket"
	bucket_info=$("$garage" bucket info "$bucket")
fi

# `bucket info` lists each key as "<flags> <key id> <key name>"; grant only
# when the key lacks any of read/write/owner.
if ! printf '%s\n' "$bucket_info" |
	awk -v k="$key_id" '$1 == "RWO" && $2 == k { found = 1 } END { exit !found }'; then
	"$garage" bucket allow --read --write --owner "$bucket" --key "$key_id" >/dev/null
	echo "garage-init: allowed key $key_name read/write/owner on bucket $bucket"
fi
