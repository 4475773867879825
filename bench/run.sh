#!/bin/sh
# bench/run.sh: the comparison bench, comfygate vs a direct connection vs
# nginx vs HAProxy plus the gateway's own figures, in one run on this
# machine (see docs/performance.md). Flags pass through, e.g.
#   bench/run.sh -sections get,ws
set -eu
cd "$(dirname "$0")/.."
exec go run ./bench/cmd/compare "$@"
