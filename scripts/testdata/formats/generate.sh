#!/usr/bin/env bash
# Writes tests/data/formats with the OpenTelemetry Collector's translators (Go
# modules pinned in go.mod here): the same traces in each encoding the Collector's
# kafka exporter writes, and what its receiver-side translators decode them to.
# Needs Go; run from anywhere. The output is committed; rerun only to change it.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
out="$root/tests/data/formats"
mkdir -p "$out"
cd "$here"
[ -f go.sum ] || go mod tidy
go run . "$out"
echo "wrote $out"
