#!/usr/bin/env bash
# Run a command with a Kafka broker: the one in $KAFKA_BOOTSTRAP_SERVERS if set,
# else a fresh local Apache Kafka (KRaft, one node) that is stopped afterwards.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
py="${PYTHON:-python3}"
if [[ -n "${KAFKA_BOOTSTRAP_SERVERS:-}" ]]; then
  exec "$@"
fi
workdir="${LOCALKAFKA_RUN_DIR:-$here/../../.local/kafka-run}"
"$py" "$here/localkafka.py" start --workdir "$workdir" --libs-dir "${LOCALKAFKA_HOME:-$here/../../.local/kafka}/libs" >/dev/null
trap '"$py" "$here/localkafka.py" stop --workdir "$workdir" >/dev/null 2>&1 || true' EXIT INT TERM
KAFKA_BOOTSTRAP_SERVERS="$(cat "$workdir/bootstrap")"
export KAFKA_BOOTSTRAP_SERVERS
"$@"
