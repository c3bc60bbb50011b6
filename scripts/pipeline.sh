#!/usr/bin/env bash
# The deploy/compose pipeline without containers, run and checked here:
#
#   OTLP/HTTP --> OTel Collector --kafka exporter--> otlp_spans --> tailsift
#     --> otlp_spans_sampled --> Jaeger v2 (kafka receiver, memory store, query API)
#
# Apache Kafka from scripts/kafka.sh; the Collector (otlp receiver, kafka exporter
# with partition_traces_by_id) and Jaeger v2 built from their Go modules
# (benches/peers/build-otelcol.sh, scripts/pipeline/build-jaeger.sh); tailsift from
# this checkout (`cargo build`, or TAILSIFT_BIN). It sends one error trace and one
# ordinary trace (fresh ids, each in two OTLP requests) to the Collector, and passes
# when Jaeger's query API returns the error trace with all its spans, tailsift
# reports both traces decided (one sampled, one not), and Jaeger answers 404 for the
# ordinary one. Every process it starts is stopped by pid on exit; logs stay in the
# work folder it prints.
#
# Needs Java 17 + Maven (Kafka), Go 1.26 (the Collector and Jaeger), curl, openssl.
# Ports (127.0.0.1): Kafka PIPELINE_KAFKA_PORT (default 26092, +1 controller, +2/+3
# secure listeners), Collector OTLP/HTTP 26318, tailsift telemetry 26090, Jaeger query
# 26686 (HTTP) and 26685 (gRPC).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

work=$(mktemp -d /tmp/tailsift-pipeline.XXXXXX)
export TAILSIFT_KAFKA_DIR="$work/kafka" KAFKA_BASE_PORT="${PIPELINE_KAFKA_PORT:-26092}"
otlp=127.0.0.1:26318 telemetry=127.0.0.1:26090 query=127.0.0.1:26686
name=pipeline
# shellcheck source=scripts/pipeline/common.sh
. "$root/scripts/pipeline/common.sh"
build_peers

bootstrap=$(scripts/kafka.sh start)
scripts/kafka.sh topic otlp_spans 4
echo "pipeline: Kafka at $bootstrap; work folder $work" >&2

cat >"$work/collector.yaml" <<YAML
receivers:
  otlp:
    protocols:
      http: {endpoint: "$otlp"}
exporters:
  kafka:
    brokers: ["$bootstrap"]
    partition_traces_by_id: true
    traces: {topic: otlp_spans, encoding: otlp_proto}
service:
  telemetry:
    logs: {level: info}
    metrics: {level: none}
  pipelines:
    traces: {receivers: [otlp], exporters: [kafka]}
YAML

cat >"$work/tailsift.yaml" <<YAML
kafka:
  brokers: "$bootstrap"
  group_id: pipeline
  input_topics: [otlp_spans]
  output_topic: otlp_spans_sampled
  dead_letter_topic: tailsift-dead-letter
  create_missing_topics: true
buffer:
  decision_wait: 2s
telemetry:
  listen: "$telemetry"
policies:
  - {name: errors, type: status_code, status_code: {status_codes: [ERROR]}}
YAML

jaeger_config "$work/jaeger.yaml" otlp_spans_sampled pipeline-jaeger "$query" 127.0.0.1:26685

"$TAILSIFT_BIN" check -c "$work/tailsift.yaml" >/dev/null || fail "tailsift check refused the config"
RUST_LOG=info,librdkafka=warn "$TAILSIFT_BIN" run -c "$work/tailsift.yaml" >"$work/tailsift.log" 2>&1 &
pids+=($!)
ready() { curl -fsS "http://$telemetry/readyz" >/dev/null 2>&1; }
within 60 ready || fail "tailsift not ready"
# The output topic exists now (tailsift created it); Jaeger's receiver may subscribe.
"$otelcol" --config "$work/collector.yaml" >"$work/collector.log" 2>&1 &
pids+=($!)
"$jaeger" --config "$work/jaeger.yaml" >"$work/jaeger.log" 2>&1 &
pids+=($!)
up() { curl -fs -o /dev/null "http://$otlp/v1/traces" -X POST -H 'Content-Type: application/json' -d '{}'; }
within 60 up || fail "the Collector's OTLP receiver did not answer"
jaeger_up() { curl -fs -o /dev/null "http://$query/api/services"; }
within 60 jaeger_up || fail "Jaeger's query API did not answer"

# One trace of three spans in two requests: root (service frontend), then two children
# (service checkout); status code $2 on the last child (2 = ERROR, 0 = unset).
send_trace() {
  local trace=$1 code=$2 now root c1 c2
  now=$(date +%s%N)
  root=$(openssl rand -hex 8) c1=$(openssl rand -hex 8) c2=$(openssl rand -hex 8)
  span() { # id parent name code
    printf '{"traceId":"%s","spanId":"%s","parentSpanId":"%s","name":"%s","kind":2,"startTimeUnixNano":"%s","endTimeUnixNano":"%s","status":{"code":%s}}' \
      "$trace" "$1" "$2" "$3" "$now" "$((now + 5000000))" "$4"
  }
  request() { # service spans
    printf '{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"%s"}}]},"scopeSpans":[{"scope":{"name":"pipeline.sh"},"spans":[%s]}]}]}' "$1" "$2"
  }
  curl -fsS -o /dev/null "http://$otlp/v1/traces" -H 'Content-Type: application/json' \
    -d "$(request frontend "$(span "$root" "" "GET /checkout" 0)")"
  curl -fsS -o /dev/null "http://$otlp/v1/traces" -H 'Content-Type: application/json' \
    -d "$(request checkout "$(span "$c1" "$root" "reserve" 0),$(span "$c2" "$root" "charge" "$code")")"
}
error_trace=$(openssl rand -hex 16)
ordinary_trace=$(openssl rand -hex 16)
send_trace "$error_trace" 2 || fail "the Collector refused the error trace"
send_trace "$ordinary_trace" 0 || fail "the Collector refused the ordinary trace"
echo "pipeline: sent error trace $error_trace and ordinary trace $ordinary_trace" >&2

spans_in_jaeger() { # trace id -> number of spans Jaeger returns (0: not found)
  curl -fsS "http://$query/api/traces/$1" 2>/dev/null \
    | python3 -c 'import json,sys; d=json.load(sys.stdin)["data"]; print(sum(len(t["spans"]) for t in d))' 2>/dev/null \
    || echo 0
}
whole() { [ "$(spans_in_jaeger "$error_trace")" = 3 ]; }
within 120 whole || fail "Jaeger does not have the error trace's 3 spans (has $(spans_in_jaeger "$error_trace"))"
echo "pipeline: Jaeger returns the error trace whole (3 spans)" >&2

metric() { # sum of a metric's samples whose line contains $2
  curl -fsS "http://$telemetry/metrics" | awk -v n="$1" -v f="$2" \
    '$0 !~ /^#/ && index($0, n) == 1 && index($0, f) { s += $NF } END { print s + 0 }'
}
decided() {
  [ "$(metric tailsift_traces_decided_total 'decision="sampled"')" = 1 ] &&
    [ "$(metric tailsift_traces_decided_total 'decision="not_sampled"')" = 1 ]
}
within 60 decided || fail "tailsift did not decide one trace sampled and one not"
# The ordinary trace was decided and dropped; its decision came with the error trace's
# (same stream time), and what tailsift drops is never produced, so Jaeger can only
# answer 404 for it now and later.
code=$(curl -s -o "$work/ordinary.json" -w '%{http_code}' "http://$query/api/traces/$ordinary_trace")
[ "$code" = 404 ] || fail "Jaeger answered $code for the dropped ordinary trace: $(cat "$work/ordinary.json")"
echo "pipeline: Jaeger answers 404 for the dropped ordinary trace" >&2
echo "pipeline: PASS"
