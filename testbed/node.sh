# The testbed's node: containerd + runc, CNI bridge, kube-scheduler, kubelet, kube-proxy
# (iptables mode) and CoreDNS, so that the operator's pods really run. Sourced by up.sh
# (node_up) and down.sh (node_down), after lib.sh. testbed/README.md explains the choices.
# shellcheck shell=bash

NODE=$STATE_DIR/node
CTRD_SOCK=$NODE/containerd/containerd.sock
# Every host-wide thing the node changes, saved at node_up and put back by node_down.
NODE_SYSCTLS=(vm.overcommit_memory kernel.panic kernel.panic_on_oops net.ipv4.ip_forward
  net.bridge.bridge-nf-call-iptables net.bridge.bridge-nf-call-ip6tables)
NODE_HOST_PATHS=(/var/log/containers /var/log/pods /var/lib/kubelet /var/lib/cni /run/containerd
  /etc/cni /opt/cni /run/netns)
CGROUP_ROOT=/sys/fs/cgroup

ctr_() { ctr --address "$CTRD_SOCK" -n k8s.io "$@"; }

# The names of the nfacct objects on this machine (kube-proxy adds two), one per line.
nfacct_names() { { nfacct list 2>/dev/null || true; } | sed -n 's/.*} = \([^;]*\);.*/\1/p'; }

# ---------------------------------------------------------------- up
node_preflight() {
  [ "$(id -u)" = 0 ] || die "the node needs root (containerd, runc, iptables, a bridge); run as root or set TESTBED_NODE=0"
  local missing=()
  for cmd in containerd containerd-shim-runc-v2 runc ctr iptables iptables-save iptables-restore conntrack nft umoci ip gcc; do
    command -v "$cmd" >/dev/null || missing+=("$cmd")
  done
  [ -x /usr/lib/cni/bridge ] || missing+=("/usr/lib/cni/bridge (containernetworking-plugins)")
  [ ${#missing[@]} -eq 0 ] || die "the node needs: ${missing[*]} (make deps installs them)"
}

# Saves what node_down must restore, once per testbed (a second `up` keeps the first save).
node_save_host_state() {
  [ -f "$NODE/host-state/.complete" ] && return 0
  mkdir -p "$NODE/host-state"
  local k
  for k in "${NODE_SYSCTLS[@]}"; do
    printf '%s=%s\n' "$k" "$(sysctl -n "$k" 2>/dev/null || echo '')"
  done >"$NODE/host-state/sysctl"
  local p
  for p in "${NODE_HOST_PATHS[@]}"; do [ -e "$p" ] || echo "$p"; done >"$NODE/host-state/absent-paths"
  nft list tables 2>/dev/null >"$NODE/host-state/nft-tables" || true
  nfacct_names >"$NODE/host-state/nfacct"
  touch "$NODE/host-state/.complete"
}

node_network_up() {
  if ! ip link show "$NODE_BRIDGE" >/dev/null 2>&1; then
    log "node: bridge $NODE_BRIDGE $NODE_IP/$POD_PREFIX (node IP, host side of the pod network)"
    ip link add "$NODE_BRIDGE" type bridge
    ip addr add "$NODE_IP/$POD_PREFIX" dev "$NODE_BRIDGE"
    ip link set "$NODE_BRIDGE" up
  fi
}

node_configs() {
  mkdir -p "$NODE"/{containerd,cni/net.d,cni/ipam,kubelet,pod-logs,volume-plugins,coredns}
  cat >"$NODE/containerd/config.toml" <<EOF
version = 2
root = "$NODE/containerd/root"
state = "$NODE/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "$CTRD_SOCK"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  # Nothing here may lower oom_score_adj (no CAP_SYS_RESOURCE): without this every
  # sandbox fails in runc with "can't get final child's PID from pipe: EOF".
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$NODE/cni/net.d"
EOF
  # No ipMasq: pods talk to each other, to Services and to the host side of the bridge
  # (Kafka, PostgreSQL, the API server, DNS), never beyond the machine.
  cat >"$NODE/cni/net.d/10-outbox-testbed.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "outbox-testbed",
  "plugins": [
    {
      "type": "bridge", "bridge": "$NODE_BRIDGE", "isGateway": true, "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local", "dataDir": "$NODE/cni/ipam",
        "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$NODE_IP"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
  printf 'nameserver %s\nsearch .\noptions ndots:1\n' "$NODE_IP" >"$NODE/resolv.conf"
  write_if_changed "$NODE/kubelet/config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: $KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $KUBELET_HEALTHZ_PORT
tlsCertFile: $PKI/kubelet-serving.crt
tlsPrivateKeyFile: $PKI/kubelet-serving.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI/ca.crt}
authorization: {mode: Webhook}
containerRuntimeEndpoint: unix://$CTRD_SOCK
cgroupDriver: cgroupfs
cgroupsPerQOS: true
failCgroupV1: false
failSwapOn: false
oomScoreAdj: 0
imageGCHighThresholdPercent: 100
evictionHard: {memory.available: "0%", nodefs.available: "0%", nodefs.inodesFree: "0%", imagefs.available: "0%"}
makeIPTablesUtilChains: false
protectKernelDefaults: false
volumePluginDir: $NODE/volume-plugins
podLogsDir: $NODE/pod-logs
resolvConf: $NODE/resolv.conf
clusterDNS: [$NODE_IP]
clusterDomain: cluster.local
serializeImagePulls: false
maxPods: 110
EOF
  write_if_changed "$NODE/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $PKI/kube-proxy.kubeconfig}
mode: iptables
hostnameOverride: $NODE_NAME
bindAddress: $NODE_IP
clusterCIDR: $POD_CIDR
healthzBindAddress: 127.0.0.1:$KUBE_PROXY_HEALTHZ_PORT
metricsBindAddress: 127.0.0.1:$KUBE_PROXY_METRICS_PORT
# Only the bridge address: NodePorts on 127.0.0.1 would need route_localnet.
nodePortAddresses: ["$NODE_IP/32"]
oomScoreAdj: 0
# Zeroes: kube-proxy leaves the host's conntrack sysctls alone.
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
EOF
  write_if_changed "$NODE/coredns/Corefile" <<EOF
.:53 {
    bind $NODE_IP
    errors
    health 127.0.0.1:$COREDNS_HEALTH_PORT
    ready 127.0.0.1:$COREDNS_READY_PORT
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        kubeconfig $PKI/coredns.kubeconfig testbed
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 5
    }
    cache 5
}
EOF
}

# The pause image every pod sandbox runs, built once into the cache.
node_pause_image() {
  local tar=$CACHE_DIR/images/pause.tar
  "$TESTBED_DIR/node/images.sh" "$CACHE_DIR/images" >>"$LOG_DIR/images.log" 2>&1 || fail_part images
  ctr_ images import --base-name "${PAUSE_IMAGE%:*}" "$tar" >>"$LOG_DIR/images.log" 2>&1 || fail_part images
}

node_rbac() {
  kubectl_ apply --server-side --field-manager=outbox-testbed -f - >/dev/null <<EOF
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "outbox-testbed:coredns"}
rules:
  - apiGroups: [""]
    resources: [endpoints, services, pods, namespaces]
    verbs: [list, watch]
  - apiGroups: [discovery.k8s.io]
    resources: [endpointslices]
    verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "outbox-testbed:coredns"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "outbox-testbed:coredns"}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: "outbox-testbed:coredns"}]
EOF
}

node_ready() {
  local ready taints
  ready=$(kubectl_ get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)
  taints=$(kubectl_ get node "$NODE_NAME" -o jsonpath='{.spec.taints[*].key}' 2>/dev/null)
  [ "$ready" = True ] && [ -z "$taints" ]
}

# After node_preflight, node_save_host_state and node_network_up (up.sh runs those first,
# before the services that listen on the bridge).
node_up() {
  node_configs
  start containerd containerd --config "$NODE/containerd/config.toml"
  wait_for containerd 30 "$LOG_DIR/containerd.log" ctr --address "$CTRD_SOCK" version || fail_part containerd
  node_pause_image
  node_rbac || fail_part node-rbac
  start kube-scheduler "$K8S_BIN/kube-scheduler" --kubeconfig "$PKI/scheduler.kubeconfig" \
    --authentication-kubeconfig "$PKI/scheduler.kubeconfig" --authorization-kubeconfig "$PKI/scheduler.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$SCHEDULER_PORT" --leader-elect=false --profiling=false --v=1
  start coredns "$COREDNS_BIN/coredns" -conf "$NODE/coredns/Corefile"
  start kubelet "$K8S_BIN/kubelet" --config "$NODE/kubelet/config.yaml" \
    --kubeconfig "$PKI/kubelet.kubeconfig" --root-dir "$NODE/kubelet" --cert-dir "$NODE/kubelet/pki" \
    --hostname-override "$NODE_NAME" --node-ip "$NODE_IP" --v=1
  start kube-proxy "$K8S_BIN/kube-proxy" --config "$NODE/kube-proxy.yaml" --v=1
  wait_for kube-scheduler 60 "$LOG_DIR/kube-scheduler.log" curl -fsSk "https://127.0.0.1:$SCHEDULER_PORT/healthz" \
    || fail_part kube-scheduler
  wait_for coredns 60 "$LOG_DIR/coredns.log" curl -fsS "http://127.0.0.1:$COREDNS_READY_PORT/ready" || fail_part coredns
  wait_for kubelet 90 "$LOG_DIR/kubelet.log" curl -fsS "http://127.0.0.1:$KUBELET_HEALTHZ_PORT/healthz" || fail_part kubelet
  wait_for kube-proxy 60 "$LOG_DIR/kube-proxy.log" curl -fsS "http://127.0.0.1:$KUBE_PROXY_HEALTHZ_PORT/healthz" \
    || fail_part kube-proxy
  wait_for "node $NODE_NAME Ready and untainted" 120 "$LOG_DIR/kubelet.log" node_ready || fail_part kubelet
  log "node: $NODE_NAME Ready (pods on $POD_CIDR, cluster DNS $NODE_IP)"
}

# host_service NAME PORT TARGET_PORT: a Service without selector and the EndpointSlice
# that points it at the host side of the bridge.
host_service() {
  cat <<EOF
apiVersion: v1
kind: Service
metadata: {name: $1, labels: {app.kubernetes.io/part-of: outbox-testbed}}
spec:
  ports: [{name: main, port: $2, targetPort: $3}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: $1-testbed
  labels: {kubernetes.io/service-name: $1, app.kubernetes.io/part-of: outbox-testbed}
addressType: IPv4
ports: [{name: main, port: $3, protocol: TCP}]
endpoints: [{addresses: ["$NODE_IP"], conditions: {ready: true}}]
---
EOF
}

# Kafka and PostgreSQL as the pods see them: the names kind's quick start uses
# (manifests/kind/), as Services without selector whose EndpointSlices point at the host
# side of the bridge. `kubectl apply -n NS -f .testbed/host-services.yaml` adds them to NS.
node_host_services() {
  {
    echo "# Written by testbed/up.sh: the testbed's Kafka and PostgreSQL under the names the"
    echo "# samples use. Apply it into any namespace: kubectl apply -n NS -f THIS-FILE"
    host_service outbox-kafka 9092 "$KAFKA_POD_PORT"
    host_service outbox-postgres 5432 "$PG_PORT"
    host_service outbox-testbed-cpu 9100 "$CPU_EXPORTER_PORT"
    cat <<EOF
apiVersion: v1
kind: Secret
metadata: {name: outbox-postgres, labels: {app.kubernetes.io/part-of: outbox-testbed}}
stringData:
  url: postgres://outbox:outbox@outbox-postgres:5432/outbox
EOF
  } >"$STATE_DIR/host-services.yaml"
  kubectl_ apply -n default -f "$STATE_DIR/host-services.yaml" >/dev/null || fail_part host-services
}


# ---------------------------------------------------------------- down
# Stops the node and undoes everything it did to the host. Safe to run more than once,
# and after a half-done node_up.
node_down() {
  [ -d "$NODE" ] || return 0
  if [ -f "$RUN_DIR/kubelet.pid" ] && kubectl_ get node "$NODE_NAME" >/dev/null 2>&1; then
    # Cordon first: else ReplicaSets re-create pods on the departing node.
    log "node: cordon, delete its pods, delete the node"
    kubectl_ cordon "$NODE_NAME" >/dev/null 2>&1 || true
    timeout 40 "$K8S_BIN/kubectl" --kubeconfig "$STATE_DIR/kubeconfig" delete pods -A \
      --field-selector "spec.nodeName=$NODE_NAME" --grace-period=2 --wait=true >/dev/null 2>&1 || true
    kubectl_ delete node "$NODE_NAME" --wait=false >/dev/null 2>&1 || true
  fi
  local name
  for name in kube-proxy kubelet coredns kube-scheduler; do stop_part "$name" || true; done
  if part_running containerd; then
    local c
    for c in $(ctr_ tasks ls -q 2>/dev/null); do
      ctr_ tasks kill -a -s SIGKILL "$c" >/dev/null 2>&1 || true
    done
    sleep 0.5
    for c in $(ctr_ tasks ls -q 2>/dev/null); do ctr_ tasks delete -f "$c" >/dev/null 2>&1 || true; done
    for c in $(ctr_ containers ls -q 2>/dev/null); do ctr_ containers delete "$c" >/dev/null 2>&1 || true; done
  fi
  stop_part containerd || true
  # Shims outlive containerd by design. Each one wrote its pid to shim.pid in the bundle
  # of the task it was started for, under our containerd's state directory; it is killed
  # while that pid still runs containerd-shim-runc-v2 for that task and our socket.
  local shim_pid id
  for shim_pid in "$NODE"/containerd/state/io.containerd.runtime.v2.task/*/*/shim.pid; do
    [ -f "$shim_pid" ] || continue
    id=$(basename "$(dirname "$shim_pid")")
    stop_recorded_process --kill --process "shim $id" "$shim_pid" \
      containerd-shim-runc-v2 -id "$id" -address "$CTRD_SOCK" || true
  done
  sleep 0.3
  # Mounts: overlay rootfs, netns, kubelet's bind mount of its root dir, volumes.
  local m
  for _ in 1 2 3; do
    mapfile -t mounts < <(awk -v p="$NODE" 'index($2, p) == 1 {print $2}' /proc/self/mounts | sort -r)
    [ ${#mounts[@]} -eq 0 ] && break
    for m in "${mounts[@]}"; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; done
  done
  if ip link show "$NODE_BRIDGE" >/dev/null 2>&1; then
    log "node: removing bridge $NODE_BRIDGE"
    ip link delete "$NODE_BRIDGE" || true
  fi
  node_clean_netfilter
  node_clean_cgroups
  node_restore_host_state
}

# iptables: every KUBE-* and CNI-* chain and every rule that jumps to one; then the nft
# tables (iptables-nft's own included) and nfacct objects that were not there before.
node_clean_netfilter() {
  local save restore rules ours='KUBE-|CNI-'
  for pair in "iptables-save iptables-restore" "ip6tables-save ip6tables-restore"; do
    read -r save restore <<<"$pair"
    # The whole save first: `save | grep -q` under pipefail fails when grep stops reading
    # before a long save is written (SIGPIPE), which skipped the cleanup.
    rules=$("$save" 2>/dev/null) || { log "warning: $save failed; its rules are left as they are"; continue; }
    grep -qE "$ours" <<<"$rules" || continue
    grep -vE "^:($ours)|^-A ($ours)|-[jg] ($ours)" <<<"$rules" | "$restore" || log "warning: $restore failed"
    rules=$("$save" 2>/dev/null | grep -E "$ours" || true)
    [ -z "$rules" ] || log "warning: $save still shows $(wc -l <<<"$rules") chains or rules of the node, e.g. ${rules%%$'\n'*}"
  done
  local table
  while read -r table; do
    [ -n "$table" ] || continue
    grep -qxF "$table" "$NODE/host-state/nft-tables" 2>/dev/null && continue
    # shellcheck disable=SC2086 # "table FAMILY NAME" splits into nft's arguments
    nft delete ${table} 2>/dev/null || true
  done < <(nft list tables 2>/dev/null)
  local obj
  while read -r obj; do
    [ -n "$obj" ] || continue
    grep -qxF "$obj" "$NODE/host-state/nfacct" 2>/dev/null || nfacct del "$obj" 2>/dev/null || true
  done < <(nfacct_names)
}

# kubelet's /kubepods tree (cgroupfs driver) in every hierarchy, deepest first.
node_clean_cgroups() {
  local h
  for h in "$CGROUP_ROOT"/*/; do
    [ -d "$h/kubepods" ] || continue
    find "$h/kubepods" -depth -type d -exec rmdir {} \; 2>/dev/null || true
  done
}

node_restore_host_state() {
  local saved=$NODE/host-state
  [ -f "$saved/sysctl" ] || return 0
  local line k v
  while IFS= read -r line; do
    k=${line%%=*}; v=${line#*=}
    [ -n "$v" ] || continue
    [ "$(sysctl -n "$k" 2>/dev/null)" = "$v" ] || sysctl -qw "$k=$v" >/dev/null 2>&1 || log "warning: could not restore $k=$v"
  done <"$saved/sysctl"
  local p
  while IFS= read -r p; do
    [ -n "$p" ] && [ -e "$p" ] || continue
    if awk -v p="$p" 'index($2, p) == 1 {found=1} END {exit !found}' /proc/self/mounts; then
      log "warning: $p still has mounts; left in place"
    else
      rm -rf "$p"
    fi
  done <"$saved/absent-paths"
  rm -f "$saved/.complete"
}
