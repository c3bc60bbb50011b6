#!/usr/bin/env bash
# Starts and stops Apache Kafka (KRaft, combined broker+controller nodes) on 127.0.0.1,
# fetched from Maven Central with Maven: no tarball, no Docker.
#
#   scripts/kafka.sh start [--nodes N]   # prints the bootstrap address on stdout
#   scripts/kafka.sh stop                # stops exactly the processes it started
#   scripts/kafka.sh kill NODE           # SIGKILLs one node (cluster tests)
#   scripts/kafka.sh term NODE           # stops one node gracefully (SIGTERM), waits
#   scripts/kafka.sh restart NODE        # starts a killed node again on its data
#   scripts/kafka.sh secure              # prints the secure listeners and credentials
#   scripts/kafka.sh acl ARGS            # Kafka's AclCommand (StandardAuthorizer is on;
#                                        # every user but `limited` is a super user)
#   scripts/kafka.sh topic NAME PARTS    # creates a topic (if missing; the broker
#                                        # creates none on first use)
#
# Every node also listens with SASL_SSL (SCRAM-SHA-512 and PLAIN) on base+10*i+2 and
# with SSL requiring a client certificate on base+10*i+3. The keys, certificates (a CA,
# the server's, a client's, and an unrelated CA for failure tests) and passwords are
# made at start with openssl in the state folder, never kept elsewhere; `secure`
# prints where they are as KEY=VALUE lines.
#
# Environment: KAFKA_VERSION (default 4.1.1), TAILSIFT_KAFKA_CACHE (jars, default
# ~/.cache/tailsift/kafka-$KAFKA_VERSION), TAILSIFT_KAFKA_DIR (state: data, logs, pids;
# default /tmp/tailsift-kafka), KAFKA_BASE_PORT (default 19092: node i listens on
# base+10*i for PLAINTEXT, +1 controller).
set -euo pipefail

VERSION="${KAFKA_VERSION:-4.1.1}"
CACHE="${TAILSIFT_KAFKA_CACHE:-$HOME/.cache/tailsift/kafka-$VERSION}"
STATE="${TAILSIFT_KAFKA_DIR:-/tmp/tailsift-kafka}"
BASE="${KAFKA_BASE_PORT:-19092}"
HEAP="${KAFKA_HEAP:-384m}"

die() { echo "kafka.sh: $*" >&2; exit 1; }

fetch() {
  # .complete-2: the fetch includes kafka-tools (AclCommand) since the ACL tests.
  if [ -f "$CACHE/.complete-2" ]; then return; fi
  command -v mvn >/dev/null || die "Maven (mvn) is needed to fetch Kafka"
  mkdir -p "$CACHE"
  cat >"$CACHE/pom.xml" <<POM
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>tailsift</groupId><artifactId>kafka-runtime</artifactId><version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>$VERSION</version></dependency>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka-tools</artifactId><version>$VERSION</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId><version>2.24.3</version></dependency>
  </dependencies>
</project>
POM
  echo "kafka.sh: fetching Apache Kafka $VERSION with Maven into $CACHE" >&2
  mvn -q -B -f "$CACHE/pom.xml" dependency:copy-dependencies -DincludeScope=runtime \
    -DoutputDirectory="$CACHE/libs" >&2 || die "Maven could not fetch org.apache.kafka:kafka_2.13:$VERSION"
  touch "$CACHE/.complete-2"
}

port() { echo $((BASE + 10 * $1 + $2)); }

SCRAM_USER=tailsift
# A SCRAM user that is not a super user: what it may do is what ACLs grant it.
LIMITED_USER=limited
PLAIN_USER=tailsift-plain
KEYSTORE_PASSWORD=keystore-pass

# A CA, a server certificate for 127.0.0.1/localhost, a client certificate, an
# unrelated CA, and random passwords, all in $STATE/tls.
make_tls() {
  command -v openssl >/dev/null || die "openssl is needed for the TLS listeners"
  local t="$STATE/tls"
  mkdir -p "$t"
  (
    cd "$t"
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=tailsift test CA" \
      -keyout ca.key -out ca.pem
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=unrelated CA" \
      -keyout other-ca.key -out other-ca.pem
    openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" -keyout server.key -out server.csr
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' >server.ext
    openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
      -extfile server.ext -out server.pem
    openssl pkcs12 -export -in server.pem -inkey server.key -certfile ca.pem \
      -name server -passout "pass:$KEYSTORE_PASSWORD" -out server.p12
    openssl req -newkey rsa:2048 -nodes -subj "/CN=tailsift-client" -keyout client.key -out client.csr
    openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -out client.pem
    head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' >scram.password
    head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' >plain.password
    head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' >limited.password
  ) >"$t/openssl.log" 2>&1 || { cat "$t/openssl.log" >&2; die "openssl could not make the test certificates"; }
}

cmd_secure() {
  local t="$STATE/tls" n j sasl="" ssl=""
  [ -f "$STATE/nodes" ] || die "no broker started"
  n=$(cat "$STATE/nodes")
  for ((j = 0; j < n; j++)); do
    sasl+="${sasl:+,}127.0.0.1:$(port "$j" 2)"
    ssl+="${ssl:+,}127.0.0.1:$(port "$j" 3)"
  done
  echo "SASL_SSL=$sasl"
  echo "SSL=$ssl"
  echo "CA=$t/ca.pem"
  echo "OTHER_CA=$t/other-ca.pem"
  echo "CLIENT_CERT=$t/client.pem"
  echo "CLIENT_KEY=$t/client.key"
  echo "SCRAM_USER=$SCRAM_USER"
  echo "SCRAM_PASSWORD=$(cat "$t/scram.password")"
  echo "PLAIN_USER=$PLAIN_USER"
  echo "PLAIN_PASSWORD=$(cat "$t/plain.password")"
  echo "LIMITED_USER=$LIMITED_USER"
  echo "LIMITED_PASSWORD=$(cat "$t/limited.password")"
}

# Runs Kafka's AclCommand against the first node, e.g.
#   kafka.sh acl --add --allow-principal User:limited --operation Read --topic t
cmd_acl() {
  [ -f "$STATE/nodes" ] || die "no broker started"
  java_run "$STATE" org.apache.kafka.tools.AclCommand \
    --bootstrap-server "127.0.0.1:$(port 0 0)" "$@" >"$STATE/acl.log" 2>&1 \
    || { cat "$STATE/acl.log" >&2; die "AclCommand failed"; }
}

# Creates topic NAME with PARTS partitions (replicated as the cluster allows) unless
# it exists.
cmd_topic() {
  [ -f "$STATE/nodes" ] || die "no broker started"
  [ $# -eq 2 ] || die "usage: kafka.sh topic NAME PARTITIONS"
  local n rf; n=$(cat "$STATE/nodes"); rf=$(( n >= 3 ? 3 : 1 ))
  java_run "$STATE" org.apache.kafka.tools.TopicCommand \
    --bootstrap-server "$(bootstrap)" --create --if-not-exists \
    --topic "$1" --partitions "$2" --replication-factor "$rf" >"$STATE/topic.log" 2>&1 \
    || { cat "$STATE/topic.log" >&2; die "TopicCommand failed"; }
}

write_config() {
  local i=$1 n=$2
  local dir="$STATE/node$i"
  local voters="" j
  for ((j = 0; j < n; j++)); do
    voters+="${voters:+,}$((j + 1))@127.0.0.1:$(port "$j" 1)"
  done
  local rf=$(( n >= 3 ? 3 : 1 )) isr=$(( n >= 3 ? 2 : 1 ))
  mkdir -p "$dir/data"
  cat >"$dir/server.properties" <<PROPS
process.roles=broker,controller
node.id=$((i + 1))
controller.quorum.voters=$voters
listeners=PLAINTEXT://127.0.0.1:$(port "$i" 0),CONTROLLER://127.0.0.1:$(port "$i" 1),SASL_SSL://127.0.0.1:$(port "$i" 2),SSL://127.0.0.1:$(port "$i" 3)
advertised.listeners=PLAINTEXT://127.0.0.1:$(port "$i" 0),SASL_SSL://127.0.0.1:$(port "$i" 2),SSL://127.0.0.1:$(port "$i" 3)
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL,SSL:SSL
sasl.enabled.mechanisms=SCRAM-SHA-512,PLAIN
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_$PLAIN_USER="$PLAIN_PASSWORD";
ssl.keystore.type=PKCS12
ssl.keystore.location=$STATE/tls/server.p12
ssl.keystore.password=$KEYSTORE_PASSWORD
ssl.truststore.type=PEM
ssl.truststore.location=$STATE/tls/ca.pem
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
super.users=User:ANONYMOUS;User:$SCRAM_USER;User:$PLAIN_USER;User:CN=tailsift-client
listener.name.ssl.ssl.client.auth=required
log.dirs=$dir/data
num.partitions=4
offsets.topic.replication.factor=$rf
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=$rf
transaction.state.log.min.isr=$isr
transaction.state.log.num.partitions=8
default.replication.factor=$rf
min.insync.replicas=$isr
group.initial.rebalance.delay.ms=0
log.cleaner.dedupe.buffer.size=2097152
auto.create.topics.enable=false
# A killed producer's open transaction is aborted within this of its timeout.
transaction.abort.timed.out.transaction.cleanup.interval.ms=1000
PROPS
  if [ -n "${KAFKA_EXTRA_PROPERTIES:-}" ]; then
    printf '%s\n' "$KAFKA_EXTRA_PROPERTIES" >>"$dir/server.properties"
  fi
  cat >"$dir/log4j2.properties" <<LOG
status = error
appender.file.type = File
appender.file.name = file
appender.file.fileName = $dir/server.log
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.file.ref = file
logger.kafka.name = kafka
logger.kafka.level = INFO
LOG
}

java_run() {
  local dir=$1; shift
  java -Xmx"$HEAP" -Xms64m -XX:+UseG1GC -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$dir/log4j2.properties" \
    -cp "$CACHE/libs/*" "$@"
}

start_node() {
  local i=$1
  local dir="$STATE/node$i"
  nohup java -Xmx"$HEAP" -Xms64m -XX:+UseG1GC -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$dir/log4j2.properties" \
    -cp "$CACHE/libs/*" kafka.Kafka "$dir/server.properties" \
    >"$dir/stdout.log" 2>&1 </dev/null &
  echo $! >"$dir/pid"
}

wait_ready() {
  local i=$1
  local dir="$STATE/node$i" deadline=$((SECONDS + 120))
  while ((SECONDS < deadline)); do
    if grep -q "Kafka Server started\|\[KafkaRaftServer nodeId=.*\] Kafka Server started" "$dir/server.log" 2>/dev/null \
       || grep -q "Kafka Server started" "$dir/stdout.log" 2>/dev/null; then
      return 0
    fi
    kill -0 "$(cat "$dir/pid")" 2>/dev/null || { tail -20 "$dir/stdout.log" "$dir/server.log" >&2 2>/dev/null; die "node $i exited during start"; }
    sleep 0.5
  done
  die "node $i did not start within 120 s (see $dir/server.log)"
}

bootstrap() {
  local n; n=$(cat "$STATE/nodes")
  local out="" j
  for ((j = 0; j < n; j++)); do out+="${out:+,}127.0.0.1:$(port "$j" 0)"; done
  echo "$out"
}

cmd_start() {
  local n=1
  while [ $# -gt 0 ]; do
    case "$1" in
      --nodes) n="$2"; shift 2 ;;
      *) die "unknown option $1" ;;
    esac
  done
  command -v java >/dev/null || die "Java 17+ is needed"
  if [ -f "$STATE/nodes" ]; then cmd_stop; fi
  fetch
  rm -rf "$STATE"; mkdir -p "$STATE"
  echo "$n" >"$STATE/nodes"
  make_tls
  PLAIN_PASSWORD=$(cat "$STATE/tls/plain.password")
  local scram
  scram="SCRAM-SHA-512=[name=$SCRAM_USER,password=$(cat "$STATE/tls/scram.password")]"
  local limited
  limited="SCRAM-SHA-512=[name=$LIMITED_USER,password=$(cat "$STATE/tls/limited.password")]"
  local id i
  id=$(java_run "$STATE" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -1)
  [ -n "$id" ] || die "StorageTool random-uuid printed nothing"
  for ((i = 0; i < n; i++)); do
    write_config "$i" "$n"
    java_run "$STATE/node$i" kafka.tools.StorageTool format -t "$id" \
      -c "$STATE/node$i/server.properties" --add-scram "$scram" --add-scram "$limited" >"$STATE/node$i/format.log" 2>&1 \
      || { cat "$STATE/node$i/format.log" >&2; die "storage format failed for node $i"; }
  done
  for ((i = 0; i < n; i++)); do start_node "$i"; done
  for ((i = 0; i < n; i++)); do wait_ready "$i"; done
  bootstrap
}

cmd_stop() {
  [ -d "$STATE" ] || return 0
  local d pid
  for d in "$STATE"/node*; do
    [ -f "$d/pid" ] || continue
    pid=$(cat "$d/pid")
    kill "$pid" 2>/dev/null || true
  done
  for d in "$STATE"/node*; do
    [ -f "$d/pid" ] || continue
    pid=$(cat "$d/pid")
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$d/pid"
  done
  rm -f "$STATE/nodes"
}

cmd_kill() {
  local dir="$STATE/node$1"
  [ -f "$dir/pid" ] || die "node $1 is not running"
  kill -9 "$(cat "$dir/pid")" 2>/dev/null || true
  rm -f "$dir/pid"
}

# A graceful stop of one node (SIGTERM: controlled shutdown, its partitions' leadership
# moved first), waiting up to 60 s for it to exit; as a rolling restart does.
cmd_term() {
  local dir="$STATE/node$1" pid
  [ -f "$dir/pid" ] || die "node $1 is not running"
  pid="$(cat "$dir/pid")"
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 600); do
    kill -0 "$pid" 2>/dev/null || { rm -f "$dir/pid"; return 0; }
    sleep 0.1
  done
  die "node $1 did not stop within 60 s of SIGTERM"
}

cmd_restart() {
  local dir="$STATE/node$1"
  [ -f "$dir/pid" ] && kill -0 "$(cat "$dir/pid")" 2>/dev/null && die "node $1 is running"
  : >"$dir/server.log"; start_node "$1"; wait_ready "$1"
}

case "${1:-}" in
  start) shift; cmd_start "$@" ;;
  stop) cmd_stop ;;
  kill) cmd_kill "$2" ;;
  term) cmd_term "$2" ;;
  restart) cmd_restart "$2" ;;
  bootstrap) bootstrap ;;
  secure) cmd_secure ;;
  acl) shift; cmd_acl "$@" ;;
  topic) shift; cmd_topic "$@" ;;
  fetch) fetch ;;
  *) die "usage: kafka.sh start [--nodes N] | stop | kill NODE | term NODE | restart NODE | bootstrap | secure | acl ARGS | topic NAME PARTITIONS | fetch" ;;
esac
