#!/usr/bin/env bash
# Builds the Debian package into build/: sluice_VERSION_ARCH.deb. Installs what the build
# needs first (scripts/setup.sh), as the README's commands do.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh
cmake --build build --target man
(cd build && cpack -G DEB)
ls build/sluice_*.deb
