#!/usr/bin/env bash
# The whole performance comparison on this machine: the CPU ceiling, then
# Samverkan (SQLite flat out in two shapes, 1,000 alerts/s with 1,000
# clients connected, PostgreSQL flat out), rumqttd alone and Mosquitto, then
# the ratios and the targets. Arguments go to `samverkan-bench compare`
# (e.g. --duration 60 --json compare.json).
#
# Needs Mosquitto (apt-get install -y mosquitto) and, for the PostgreSQL
# run, SAMVERKAN_TEST_POSTGRES (e.g. postgres://postgres@127.0.0.1:5432/test).
set -euo pipefail
cd "$(dirname "$0")/../.."

if ! command -v mosquitto >/dev/null && [ ! -x /usr/sbin/mosquitto ]; then
    echo "compare.sh: mosquitto is not installed (apt-get install -y mosquitto)" >&2
    exit 1
fi
if [ -z "${SAMVERKAN_TEST_POSTGRES:-}" ]; then
    echo "compare.sh: SAMVERKAN_TEST_POSTGRES is not set; PostgreSQL will not be measured" >&2
fi

cargo build --release -p samverkan-broker -p samverkan-e2e --bins
exec "${CARGO_TARGET_DIR:-target}/release/samverkan-bench" compare "$@"
