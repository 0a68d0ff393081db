#!/usr/bin/env bash
# Installs everything Sluice needs to build, test and benchmark on Debian 12.
# Idempotent: packages already present are skipped by apt. Run as root (or with sudo).
set -euo pipefail

packages=(
  # build
  build-essential cmake pkg-config git ca-certificates
  help2man dpkg-dev file systemd  # the Debian package: man page, dependencies (CPack needs file), unit check
  libboost1.81-dev          # Asio + Beast; not libboost-dev (1.74), they conflict
  libssl-dev libyaml-cpp-dev libspdlog-dev libfmt-dev libhiredis-dev
  libgtest-dev libgmock-dev libbenchmark-dev libpq-dev
  # real components for tests, demo and benchmarks
  postgresql postgresql-contrib postgresql-client redis-server redis-tools redis-sentinel pgbouncer
  python3 python3-pytest python3-psycopg python3-asyncpg python3-prometheus-client python3-yaml
  python3-matplotlib        # bench/pgbench_compare.py --png
  valgrind                  # bench/callgrind_xact.py: instructions per transaction
  strace                    # bench/syscalls_xact.py: system calls per transaction
  clang libclang-rt-14-dev   # libFuzzer targets and the thread-sanitizer build
  procps iproute2 util-linux
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "setup: all packages present"
  exit 0
fi
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
echo "setup: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# Debian starts these services on install; the project runs its own throwaway instances.
for svc in postgresql redis-server redis-sentinel pgbouncer; do
  $SUDO systemctl stop "$svc" >/dev/null 2>&1 || $SUDO service "$svc" stop >/dev/null 2>&1 || true
done
echo "setup: done"
