#!/usr/bin/env bash
# Brings the testbed up: etcd, kube-apiserver, kube-controller-manager, a single-node
# KRaft Kafka broker, a throwaway PostgreSQL, and a node (containerd, kubelet,
# kube-proxy, kube-scheduler, CoreDNS; testbed/node.sh) so that pods run. Idempotent:
# parts that already run are left alone. Waits until each part is really ready (the node
# Ready and untainted), then writes .testbed/env. On any failure it names the part and
# its log, and stops everything. TESTBED_NODE=0 leaves the node out (no root needed).
. "$(dirname "$0")/lib.sh"
# shellcheck source=node.sh
. "$TESTBED_DIR/node.sh"

"$TESTBED_DIR/build.sh"

mkdir -p "$LOG_DIR" "$RUN_DIR" "$STATE_DIR/pki"
chmod 755 "$STATE_DIR" "$RUN_DIR"

# Any exit before the end (a failed part, an error, an interrupt) stops everything.
up_complete=0
on_exit() {
  ((up_complete)) && return 0
  log "bring-up failed; stopping every testbed process (logs stay in $LOG_DIR)"
  "$TESTBED_DIR/down.sh" --keep-logs || true
}
trap on_exit EXIT
trap 'exit 130' INT TERM

# Ports are chosen once per testbed and kept, so a second `up` reuses them.
PORTS=$STATE_DIR/ports.env
if [ ! -f "$PORTS" ]; then
  ports=$(free_ports 16) || die "could not find 16 free ports on 127.0.0.1"
  read -r p1 p2 p3 p4 p5 p6 p7 p8 p9 p10 p11 p12 p13 p14 p15 p16 <<<"$ports"
  printf '%s\n' "ETCD_PORT=$p1" "ETCD_PEER_PORT=$p2" "APISERVER_PORT=$p3" "KCM_PORT=$p4" \
    "KAFKA_PORT=$p5" "KAFKA_CONTROLLER_PORT=$p6" "PG_PORT=$p7" "KAFKA_POD_PORT=$p8" \
    "SCHEDULER_PORT=$p9" "KUBELET_PORT=$p10" "KUBELET_HEALTHZ_PORT=$p11" \
    "KUBE_PROXY_HEALTHZ_PORT=$p12" "KUBE_PROXY_METRICS_PORT=$p13" \
    "COREDNS_HEALTH_PORT=$p14" "COREDNS_READY_PORT=$p15" "CPU_EXPORTER_PORT=$p16" >"$PORTS"
fi
# shellcheck source=/dev/null
. "$PORTS"

# start NAME CMD...: CMD detached in its own session, logging to logs/NAME.log, its pid,
# start time and command line recorded in run/ (lib.sh's start_part).
start() { start_part "$@"; }

fail_part() { # fail_part NAME: report which part failed and where its log is, and stop
  log "$1 failed to start; its log is $LOG_DIR/$1.log"
  exit 1
}

# ---------------------------------------------------------------- certificates
PKI=$STATE_DIR/pki
gen_pki() {
  [ -f "$PKI/.complete" ] && return 0
  log "pki: generating a CA, serving and client certificates, service-account keys"
  local o="openssl"
  $o req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=outbox-testbed-ca" \
    -keyout "$PKI/ca.key" -out "$PKI/ca.crt" 2>/dev/null
  cat >"$PKI/serving.ext" <<EOF
subjectAltName=IP:127.0.0.1,IP:10.0.0.1,IP:$NODE_IP,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local
extendedKeyUsage=serverAuth
EOF
  printf 'extendedKeyUsage=clientAuth\n' >"$PKI/client.ext"
  printf 'subjectAltName=IP:%s,DNS:%s\nextendedKeyUsage=serverAuth\n' "$NODE_IP" "$NODE_NAME" >"$PKI/kubelet-serving.ext"
  issue() { # issue NAME SUBJECT EXTFILE
    $o req -newkey rsa:2048 -nodes -subj "$2" -keyout "$PKI/$1.key" -out "$PKI/$1.csr" 2>/dev/null
    $o x509 -req -in "$PKI/$1.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
      -days 3650 -extfile "$3" -out "$PKI/$1.crt" 2>/dev/null
  }
  issue apiserver "/CN=kube-apiserver" "$PKI/serving.ext"
  issue admin "/O=system:masters/CN=admin" "$PKI/client.ext"
  issue controller-manager "/CN=system:kube-controller-manager" "$PKI/client.ext"
  # The node's identities: what the Node authorizer and the default RBAC roles expect.
  issue kubelet "/O=system:nodes/CN=system:node:$NODE_NAME" "$PKI/client.ext"
  issue kubelet-serving "/CN=$NODE_NAME" "$PKI/kubelet-serving.ext"
  issue apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" "$PKI/client.ext"
  issue kube-proxy "/CN=system:kube-proxy" "$PKI/client.ext"
  issue scheduler "/CN=system:kube-scheduler" "$PKI/client.ext"
  issue coredns "/CN=outbox-testbed:coredns" "$PKI/client.ext"
  $o genrsa -out "$PKI/sa.key" 2048 2>/dev/null
  $o rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
  touch "$PKI/.complete"
}

kubeconfig() { # kubeconfig CLIENT-CERT-NAME USER > file
  local b64="base64 -w0"
  cat <<EOF
apiVersion: v1
kind: Config
clusters:
- name: testbed
  cluster:
    server: https://127.0.0.1:$APISERVER_PORT
    certificate-authority-data: $($b64 <"$PKI/ca.crt")
users:
- name: $2
  user:
    client-certificate-data: $($b64 <"$PKI/$1.crt")
    client-key-data: $($b64 <"$PKI/$1.key")
contexts:
- name: testbed
  context: {cluster: testbed, user: $2, namespace: default}
current-context: testbed
EOF
}

gen_pki
kubeconfig admin admin >"$STATE_DIR/kubeconfig"
kubeconfig controller-manager system:kube-controller-manager >"$PKI/controller-manager.kubeconfig"
kubeconfig kubelet "system:node:$NODE_NAME" >"$PKI/kubelet.kubeconfig"
kubeconfig kube-proxy system:kube-proxy >"$PKI/kube-proxy.kubeconfig"
kubeconfig scheduler system:kube-scheduler >"$PKI/scheduler.kubeconfig"
kubeconfig coredns outbox-testbed:coredns >"$PKI/coredns.kubeconfig"

# ---------------------------------------------------------------- node network
# The bridge comes first: Kafka, PostgreSQL and the API server listen on its address too.
if ((TESTBED_NODE)); then
  node_preflight
  node_save_host_state
  node_network_up
fi
chmod 600 "$STATE_DIR/kubeconfig"

# ---------------------------------------------------------------- etcd
start etcd "$ETCD_BIN/etcd" --name testbed --data-dir "$STATE_DIR/etcd" \
  --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
  --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-cluster "testbed=http://127.0.0.1:$ETCD_PEER_PORT" \
  --unsafe-no-fsync --quota-backend-bytes=4294967296 --log-level=warn
wait_for etcd 60 "$LOG_DIR/etcd.log" curl -fsS "http://127.0.0.1:$ETCD_PORT/health" || fail_part etcd

# ---------------------------------------------------------------- kube-apiserver
# With a node, pods reach the API server through the `kubernetes` Service (10.0.0.1:443),
# whose endpoint is the bridge address: so it listens there as well as on loopback.
if ((TESTBED_NODE)); then
  APISERVER_ADDRESSES=(--bind-address 0.0.0.0 --advertise-address "$NODE_IP")
  ENDPOINT_RECONCILER=lease
else
  APISERVER_ADDRESSES=(--bind-address 127.0.0.1 --advertise-address 127.0.0.1)
  ENDPOINT_RECONCILER=none
fi
start kube-apiserver "$K8S_BIN/kube-apiserver" \
  --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
  "${APISERVER_ADDRESSES[@]}" --secure-port "$APISERVER_PORT" \
  --tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" \
  --client-ca-file "$PKI/ca.crt" \
  --service-cluster-ip-range "$SERVICE_CIDR" --allow-privileged=true \
  --authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction \
  --kubelet-client-certificate "$PKI/apiserver-kubelet-client.crt" \
  --kubelet-client-key "$PKI/apiserver-kubelet-client.key" \
  --kubelet-certificate-authority "$PKI/ca.crt" \
  --kubelet-preferred-address-types InternalIP,Hostname \
  --service-account-issuer https://kubernetes.default.svc.cluster.local \
  --api-audiences https://kubernetes.default.svc.cluster.local \
  --service-account-key-file "$PKI/sa.pub" --service-account-signing-key-file "$PKI/sa.key" \
  --endpoint-reconciler-type "$ENDPOINT_RECONCILER" --profiling=false --v=1
apiserver_ready() { "$K8S_BIN/kubectl" --kubeconfig "$STATE_DIR/kubeconfig" get --raw /readyz; }
wait_for kube-apiserver 120 "$LOG_DIR/kube-apiserver.log" apiserver_ready || fail_part kube-apiserver

# ---------------------------------------------------------------- kube-controller-manager
# Runs garbage collection (owner references), Deployments, ReplicaSets, Jobs, EndpointSlices,
# the service-account token controller and node lifecycle (it lifts the node's not-ready
# taint; without it every pod stays Pending).
start kube-controller-manager "$K8S_BIN/kube-controller-manager" \
  --kubeconfig "$PKI/controller-manager.kubeconfig" \
  --authentication-kubeconfig "$PKI/controller-manager.kubeconfig" \
  --authorization-kubeconfig "$PKI/controller-manager.kubeconfig" \
  --bind-address 127.0.0.1 --secure-port "$KCM_PORT" \
  --service-account-private-key-file "$PKI/sa.key" --root-ca-file "$PKI/ca.crt" \
  --use-service-account-credentials=true --leader-elect=false \
  --controllers '*,-nodeipam,-cloud-node-lifecycle,-service,-route,-persistentvolume-binder,-attachdetach' \
  --profiling=false --v=1
wait_for kube-controller-manager 90 "$LOG_DIR/kube-controller-manager.log" \
  curl -fsSk "https://127.0.0.1:$KCM_PORT/healthz" || fail_part kube-controller-manager

# ---------------------------------------------------------------- Kafka (KRaft)
KAFKA_DIR=$STATE_DIR/kafka
mkdir -p "$KAFKA_DIR"
# Host clients use 127.0.0.1; pods get a listener on the bridge address, advertised as such.
KAFKA_LISTENERS=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
KAFKA_ADVERTISED=PLAINTEXT://127.0.0.1:$KAFKA_PORT
if ((TESTBED_NODE)); then
  KAFKA_LISTENERS+=,POD://$NODE_IP:$KAFKA_POD_PORT
  KAFKA_ADVERTISED+=,POD://$NODE_IP:$KAFKA_POD_PORT
fi
cat >"$KAFKA_DIR/server.properties" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$KAFKA_CONTROLLER_PORT
listeners=$KAFKA_LISTENERS
advertised.listeners=$KAFKA_ADVERTISED
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,POD:PLAINTEXT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
log.dirs=$KAFKA_DIR/data
num.partitions=1
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=6
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=6
group.initial.rebalance.delay.ms=0
log.retention.hours=24
message.max.bytes=10485760
EOF
cp "$TESTBED_DIR/kafka/log4j.properties" "$KAFKA_DIR/log4j.properties"
KAFKA_JAVA=(java -Xms256m -Xmx1g -XX:+UseG1GC -Djava.awt.headless=true
  "-Dlog4j.configuration=file:$KAFKA_DIR/log4j.properties" -cp "$KAFKA_LIB/*")
if [ ! -f "$KAFKA_DIR/data/meta.properties" ]; then
  # As Kafka's own Uuid.randomUuid: never an id starting with '-', which StorageTool's
  # argument parser would take for an option (1 start in 64 failed before).
  cluster_id=$(python3 -c '
import base64, uuid
while True:
    i = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
    if not i.startswith("-"):
        print(i)
        break')
  log "kafka: formatting storage (cluster id $cluster_id)"
  "${KAFKA_JAVA[@]}" kafka.tools.StorageTool format -t "$cluster_id" \
    -c "$KAFKA_DIR/server.properties" >>"$LOG_DIR/kafka.log" 2>&1 || fail_part kafka
fi
service_cgroups_create
(enter_service_cgroup kafka; start kafka "${KAFKA_JAVA[@]}" kafka.Kafka "$KAFKA_DIR/server.properties")
wait_for kafka 120 "$LOG_DIR/kafka.log" python3 "$TESTBED_DIR/kafka_metadata.py" "127.0.0.1:$KAFKA_PORT" \
  || fail_part kafka

# ---------------------------------------------------------------- PostgreSQL
# PostgreSQL refuses to run as root; the cluster belongs to Debian's `postgres` user.
PG_DIR=$STATE_DIR/postgres
PG_SOCK=$STATE_DIR/pgsock
PG_BIN=$(pg_bindir)
[ -x "$PG_BIN/pg_ctl" ] || die "PostgreSQL $PG_MAJOR server binaries not found in $PG_BIN (apt-get install postgresql-$PG_MAJOR)"
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
if [ ! -f "$PG_DIR/PG_VERSION" ]; then
  log "postgres: initdb in $PG_DIR"
  mkdir -p "$PG_DIR" "$PG_SOCK"
  touch "$LOG_DIR/postgres.log"
  if [ "$(id -u)" = 0 ]; then chown postgres:postgres "$PG_DIR" "$PG_SOCK" "$LOG_DIR/postgres.log"; fi
  as_pg "$PG_BIN/initdb" -D "$PG_DIR" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
    -E UTF8 --locale=C.UTF-8 >>"$LOG_DIR/postgres.log" 2>&1 || fail_part postgres
  pg_listen=127.0.0.1
  if ((TESTBED_NODE)); then
    pg_listen+=",$NODE_IP"
    echo "host all all $POD_CIDR scram-sha-256" >>"$PG_DIR/pg_hba.conf"
  fi
  cat >>"$PG_DIR/postgresql.conf" <<EOF
listen_addresses = '$pg_listen'
port = $PG_PORT
unix_socket_directories = '$PG_SOCK'
max_connections = 300
shared_buffers = 1GB
max_wal_size = 4GB
checkpoint_timeout = 15min
EOF
fi
if ! as_pg "$PG_BIN/pg_ctl" -D "$PG_DIR" status >/dev/null 2>&1; then
  log "postgres: starting (log: $LOG_DIR/postgres.log)"
  (enter_service_cgroup postgres; as_pg "$PG_BIN/pg_ctl" -D "$PG_DIR" -l "$LOG_DIR/postgres.log" -w -t 60 start >/dev/null) \
    || fail_part postgres
else
  log "postgres: already running"
fi
as_pg "$PG_BIN/psql" -h "$PG_SOCK" -p "$PG_PORT" -U postgres -d postgres -qAt -v ON_ERROR_STOP=1 >/dev/null <<'EOF' || fail_part postgres
SELECT 'CREATE ROLE outbox LOGIN PASSWORD ''outbox'' CREATEDB CREATEROLE'
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'outbox') \gexec
-- CREATEROLE: the migrations create the role that may enqueue in an application's own
-- transaction, as the kind quick start's PostgreSQL (whose POSTGRES_USER is a
-- superuser) lets them; the tests of a user without it make one of their own.
ALTER ROLE outbox CREATEROLE;
SELECT 'CREATE DATABASE outbox OWNER outbox'
 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'outbox') \gexec
EOF
DATABASE_URL="postgres://outbox:outbox@127.0.0.1:$PG_PORT/outbox"
wait_for postgres 30 "$LOG_DIR/postgres.log" psql "$DATABASE_URL" -qAt -c 'select 1' || fail_part postgres

# ---------------------------------------------------------------- node
if ((TESTBED_NODE)); then
  node_up
  node_host_services
  # Kafka's and PostgreSQL's CPU time for a LoadTest's cpuSources, on the host side of
  # the node's bridge (the outbox-testbed-cpu Service of host-services.yaml).
  start cpu-exporter python3 "$TESTBED_DIR/cpu_exporter.py" --listen "$NODE_IP:$CPU_EXPORTER_PORT" \
    kafka="$RUN_DIR/kafka.pid" postgresql="$PG_DIR/postmaster.pid"
  wait_for cpu-exporter 30 "$LOG_DIR/cpu-exporter.log" \
    curl -fsS -o /dev/null "http://$NODE_IP:$CPU_EXPORTER_PORT/kafka" || fail_part cpu-exporter
fi

# ---------------------------------------------------------------- env file
cat >"$STATE_DIR/env" <<EOF
# Written by testbed/up.sh: source it to use the testbed.
export KUBECONFIG='$STATE_DIR/kubeconfig'
export KAFKA_BOOTSTRAP_SERVERS='127.0.0.1:$KAFKA_PORT'
export DATABASE_URL='$DATABASE_URL'
export TESTBED_STATE_DIR='$STATE_DIR'
export PATH='$K8S_BIN:$HELM_BIN':"\$PATH"
export TESTBED_NODE='$TESTBED_NODE'
EOF
if ((TESTBED_NODE)); then
  cat >>"$STATE_DIR/env" <<EOF
# The node: ctr talks to its containerd; host-services.yaml adds outbox-kafka and
# outbox-postgres (Services, EndpointSlices, Secret) to a namespace.
export CONTAINERD_ADDRESS='$CTRD_SOCK'
export CONTAINERD_NAMESPACE=k8s.io
export TESTBED_NODE_NAME='$NODE_NAME'
export TESTBED_HOST_SERVICES='$STATE_DIR/host-services.yaml'
EOF
fi
up_complete=1
log "ready: source $STATE_DIR/env (KUBECONFIG, KAFKA_BOOTSTRAP_SERVERS, DATABASE_URL, PATH with kubectl and helm)"
