#!/usr/bin/env bash
# The test command: sets up a fresh machine (tests/setup.sh), then runs pytest.
# Extra arguments go to pytest, e.g. `bash tests/run.sh -k config`.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
bash "$top/tests/setup.sh"
cd "$top"
exec .venv/bin/python -m pytest "$@"
