#!/usr/bin/env bash
# Builds the OpenTelemetry Collector the peer bench compares tailsift with (kafka
# receiver, tail_sampling processor, kafka exporter) from its Go modules, at the
# versions go.mod and go.sum pin, into ~/.cache/tailsift/otelcol-peer (Go 1.26;
# about 2 minutes on 2 cores, plus the modules' download the first time).
#
# Versions: the kafka receiver and exporter at contrib v0.165.1 (their v0.161.0 needs
# pkg/kafka/configkafka@v0.161.0, which the module proxy here does not serve) with
# core v0.165.0 / pdata v1.71.0; the tail_sampling processor at v0.161.0, the newest
# whose dependencies are served, built against that core.
set -euo pipefail
cd "$(dirname "$0")/otelcol"
out="${TAILSIFT_CACHE:-$HOME/.cache/tailsift}/otelcol-peer"
mkdir -p "$(dirname "$out")"
go build -o "$out" .
echo "$out"
