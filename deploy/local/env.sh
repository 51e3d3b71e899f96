# shellcheck shell=bash
# Fixed development settings for the services that deploy/local/up.sh runs.
#
#   . deploy/local/env.sh        # then run canopy or the tests
#
# This file is the single source of truth: up.sh provisions exactly these
# credentials, so they are set unconditionally rather than as overridable
# defaults. To point canopy at other services, export your own values after
# sourcing this file (or don't source it).
#
# Everything here is a throw-away development secret for loopback-only
# services; never reuse it anywhere reachable from a network.

export CANOPY_DATABASE_URL=postgres://canopy:canopy@127.0.0.1:5432/canopy
export CANOPY_REDIS_URL=redis://127.0.0.1:6379

export CANOPY_S3_ENDPOINT=http://127.0.0.1:3900
export CANOPY_S3_REGION=garage
export CANOPY_S3_BUCKET=canopy
# Garage only accepts imported key ids of the form GK + 24 hex digits and
# secrets of 64 hex digits.
export CANOPY_S3_ACCESS_KEY_ID=GK0123456789abcdef01234567
export CANOPY_S3_SECRET_ACCESS_KEY=8d8e3b8f3a8c4e2f9b1d7a6c5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f
