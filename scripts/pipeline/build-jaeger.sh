#!/usr/bin/env bash
# Builds Jaeger v2 (github.com/jaegertracing/jaeger/cmd/jaeger, the OTel-Collector-based
# all-in-one) from its Go module at the version go.mod pins (v1.75.0, the module tag of
# the Jaeger v2 release line), into ~/.cache/tailsift/jaeger. Go 1.26; about 6 minutes
# on 2 cores the first time, plus the modules' download.
set -euo pipefail
cd "$(dirname "$0")/jaeger"
out="${TAILSIFT_CACHE:-$HOME/.cache/tailsift}/jaeger"
mkdir -p "$(dirname "$out")"
go build -o "$out" github.com/jaegertracing/jaeger/cmd/jaeger
echo "$out"
