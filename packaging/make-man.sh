#!/usr/bin/env bash
# make-man.sh SLUICE OUT: sluice(1) from `sluice --help`, `sluice --version` and the
# settings table (`sluice --settings-reference=man`), through help2man. Run by CMake.
set -euo pipefail
bin=$1 out=$2
here=$(cd "$(dirname "$0")" && pwd)
include=$(mktemp)
trap 'rm -f "$include"' EXIT
cat "$here/man-sections.h2m" > "$include"
"$bin" --settings-reference=man >> "$include"
help2man --no-info --section=1 --name="PostgreSQL connection pooler" \
    --include="$include" --output="$out" "$bin"
