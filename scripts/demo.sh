#!/usr/bin/env bash
# The demo: installs what is missing, builds, then starts a throwaway PostgreSQL and Redis
# on loopback, puts Sluice in front of them with conf/sluice.yaml, drives pgbench load
# through it and shows throughput, pool and tenant stats.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh -DSLUICE_TESTS=OFF -DSLUICE_BENCH=OFF
exec /usr/bin/python3 scripts/demo.py "$@"
