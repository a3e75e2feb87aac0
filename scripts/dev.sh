#!/usr/bin/env bash
# The two entry points in README.md. Both set everything up first (idempotent).
#   sudo scripts/dev.sh demo   - the 12-request LVS-DR demo on the network-namespace lab
#   sudo scripts/dev.sh test   - the whole test suite
#   sudo scripts/dev.sh coverage - the same, ending with the line coverage of lb/
#   sudo scripts/dev.sh bench  - `dr-lb bench`: dr-lb, a reflector and the kernel (--quick, --json, --plot)
#   sudo scripts/dev.sh mutate - the mutation check of the data plane (tests/mutants.py)
set -euo pipefail
cd "$(dirname "$0")/.."
cmd=${1:-}
shift || true
scripts/setup.sh
case "$cmd" in
    demo)  exec .venv/bin/dr-lb lab demo "$@" ;;
    test)  exec .venv/bin/python -m pytest -ra "$@" tests ;;
    # The same with the line coverage of lb/, subprocesses (`dr-lb up` in the namespaces)
    # included: about a fifth slower, so not what CI runs.
    coverage) exec .venv/bin/python -m pytest -ra --cov=lb --cov-report=term "$@" tests ;;
    bench) exec .venv/bin/dr-lb bench "$@" ;;
    mutate) exec .venv/bin/python -m tests.mutation "$@" ;;
    *) echo "usage: sudo $0 demo|test|coverage|bench|mutate" >&2; exit 2 ;;
esac
