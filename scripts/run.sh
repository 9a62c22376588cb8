#!/usr/bin/env bash
# One command to run statetrack on the embedded default: installs what is missing, builds the
# release binary and starts `statetrack serve` (data in ./var/statetrack.db, port 3000 unless
# PORT or --port says otherwise). Extra arguments go to `statetrack serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
cmake --preset release >/dev/null
cmake --build --preset release --target statetrack
exec ./build/release/statetrack serve "$@"
