#!/usr/bin/env bash
# Renders the plain Kubernetes manifests in deploy/kubernetes/ from the Helm chart in
# deploy/helm/tailsift/, with a helm built from its Go module (Go 1.26; no download
# of a prebuilt binary). `--check`: render and fail if the committed files differ.
#
#   scripts/render-manifests.sh           # rewrite deploy/kubernetes/*.yaml
#   scripts/render-manifests.sh --check   # CI: the committed manifests are current
set -euo pipefail
cd "$(dirname "$0")/.."
HELM_VERSION=v4.3.2
BIN="${TAILSIFT_CACHE:-$HOME/.cache/tailsift}/helm-$HELM_VERSION"
if [ ! -x "$BIN/helm" ]; then
  echo "building helm $HELM_VERSION from its Go module into $BIN" >&2
  GOBIN="$BIN" go install "helm.sh/helm/v4/cmd/helm@$HELM_VERSION"
fi
out="deploy/kubernetes"
if [ "${1:-}" = "--check" ]; then
  out="$(mktemp -d)"
  trap 'rm -rf "$out"' EXIT
fi
mkdir -p "$out"
render() {
  echo "# Rendered by scripts/render-manifests.sh from deploy/helm/tailsift (helm $HELM_VERSION): do not edit."
  echo "# $1"
  shift
  "$BIN/helm" template tailsift deploy/helm/tailsift --namespace tracing "$@"
}
render "Defaults: a StatefulSet of 2 with static membership, at-least-once." \
  > "$out/tailsift.yaml"
render "Exactly-once, credentials from a Secret, scraped by a ServiceMonitor and scaled by KEDA on unread input." \
  --set kafka.exactlyOnce=true \
  --set-string 'kafka.client.security\.protocol=SASL_SSL' \
  --set-string 'kafka.client.sasl\.mechanism=SCRAM-SHA-512' \
  --set-string 'kafka.client.sasl\.username=${env:KAFKA_USERNAME}' \
  --set-string 'kafka.client.sasl\.password=${file:/etc/tailsift/secrets/kafka-password}' \
  --set-string secret.env.KAFKA_USERNAME=tailsift \
  --set-string secret.files.kafka-password=change-me \
  --set serviceMonitor.enabled=true \
  --set keda.enabled=true \
  > "$out/tailsift-exactly-once-keda.yaml"
render "A Deployment with any config key set through config:, a service account, scheduling constraints and an extra volume." \
  --set workload=Deployment \
  --set-json 'config={"promotion":{"max_concurrent_rereads":4},"kafka":{"commit_interval":"2s"},"trace":{"max_spans":50000}}' \
  --set serviceAccount.create=true \
  --set-json 'serviceAccount.annotations={"eks.amazonaws.com/role-arn":"arn:aws:iam::111122223333:role/tailsift"}' \
  --set-json 'nodeSelector={"kubernetes.io/arch":"arm64"}' \
  --set-json 'tolerations=[{"key":"dedicated","operator":"Equal","value":"tracing","effect":"NoSchedule"}]' \
  --set-json 'podAnnotations={"example.com/team":"observability"}' \
  --set-json 'imagePullSecrets=[{"name":"registry"}]' \
  --set-json 'extraEnv=[{"name":"RUST_BACKTRACE","value":"1"}]' \
  --set-json 'extraVolumes=[{"name":"ca","configMap":{"name":"kafka-ca"}}]' \
  --set-json 'extraVolumeMounts=[{"name":"ca","mountPath":"/etc/tailsift/ca","readOnly":true}]' \
  > "$out/tailsift-deployment-custom.yaml"
if [ "${1:-}" = "--check" ]; then
  diff -ru deploy/kubernetes "$out" || {
    echo "deploy/kubernetes is not what the chart renders: run scripts/render-manifests.sh" >&2
    exit 1
  }
  echo "deploy/kubernetes matches the chart"
fi
