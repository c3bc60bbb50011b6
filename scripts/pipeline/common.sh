# Shared by scripts/pipeline.sh and scripts/formats.sh (sourced, not run): stopping
# what they start, failing with the logs, polling, and building the peers.
#
# Expects: $name (the script's name, for messages), $root (the checkout), $work (the
# work folder, whose *.log files a failure prints) and the Kafka variables
# scripts/kafka.sh reads. Sets: pids (append each started process), otelcol, jaeger
# and TAILSIFT_BIN (after build_peers).

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  "$root/scripts/kafka.sh" stop || true
}
trap cleanup EXIT
fail() {
  echo "$name: FAIL: $*" >&2
  for f in "$work"/*.log; do echo "--- $f (last 20 lines)" >&2; tail -20 "$f" >&2; done
  exit 1
}
# Polls `$@` every 0.5 s for up to $1 seconds.
within() {
  local secs=$1; shift
  local end=$((SECONDS + secs))
  until "$@"; do
    [ $SECONDS -lt $end ] || return 1
    sleep 0.5
  done
}
# The Collector and Jaeger v2 from their Go modules, tailsift from this checkout
# (unless TAILSIFT_BIN names one).
build_peers() {
  echo "$name: building the Collector and Jaeger (Go), tailsift (cargo)" >&2
  otelcol=$("$root/benches/peers/build-otelcol.sh")
  jaeger=$("$root/scripts/pipeline/build-jaeger.sh")
  if [ -z "${TAILSIFT_BIN:-}" ]; then
    cargo build --quiet
    TAILSIFT_BIN="$root/target/debug/tailsift"
  fi
}
# Jaeger v2's config into $1: its kafka receiver reads topic $2 (OTLP protobuf) as
# group $3 from $bootstrap into the memory store; the query API on $4 (HTTP) and $5
# (gRPC).
jaeger_config() {
  cat >"$1" <<YAML
service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces:
      receivers: [kafka]
      exporters: [jaeger_storage_exporter]
  telemetry:
    logs: {level: info}
    metrics: {level: none}
extensions:
  jaeger_query:
    storage: {traces: memstore}
    http: {endpoint: "$4"}
    grpc: {endpoint: "$5"}
  jaeger_storage:
    backends:
      memstore:
        memory: {max_traces: 10000}
receivers:
  kafka:
    brokers: ["$bootstrap"]
    topic: $2
    encoding: otlp_proto
    group_id: $3
    initial_offset: earliest
exporters:
  jaeger_storage_exporter:
    trace_storage: memstore
YAML
}
