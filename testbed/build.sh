#!/usr/bin/env bash
# Builds (or finds cached) every testbed component: Kubernetes control-plane binaries,
# etcd and helm from Go modules, Kafka jars from Maven Central. Idempotent: a component
# whose binaries are in the cache is skipped. Usage: testbed/build.sh [component...]
. "$(dirname "$0")/lib.sh"

mkdir -p "$CACHE_DIR"

version_ldflags() {
  local minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
  local flags="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    flags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    flags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  echo "$flags"
}

build_kubernetes() {
  local cmds=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl)
  local missing=0
  for c in "${cmds[@]}"; do [ -x "$K8S_BIN/$c" ] || missing=1; done
  ((missing)) || { log "kubernetes $K8S_VERSION: cached"; return 0; }
  log "kubernetes $K8S_VERSION: building ${cmds[*]} from Go modules (cold: ~15 min on 2 cores)"
  mkdir -p "$K8S_BIN.tmp"
  (cd "$TESTBED_DIR/k8s" && go build -trimpath -ldflags "$(version_ldflags)" -o "$K8S_BIN.tmp/" \
    "${cmds[@]/#/k8s.io/kubernetes/cmd/}")
  rm -rf "$K8S_BIN" && mv "$K8S_BIN.tmp" "$K8S_BIN"
}

build_etcd() {
  [ -x "$ETCD_BIN/etcd" ] && { log "etcd $ETCD_VERSION: cached"; return 0; }
  log "etcd $ETCD_VERSION: building from Go modules"
  mkdir -p "$ETCD_BIN.tmp"
  (cd "$TESTBED_DIR/etcd" && go build -trimpath -ldflags "-s -w" -o "$ETCD_BIN.tmp/etcd" go.etcd.io/etcd/server/v3)
  rm -rf "$ETCD_BIN" && mv "$ETCD_BIN.tmp" "$ETCD_BIN"
}

build_helm() {
  [ -x "$HELM_BIN/helm" ] && { log "helm $HELM_VERSION: cached"; return 0; }
  log "helm $HELM_VERSION: building from Go modules"
  mkdir -p "$HELM_BIN.tmp"
  local minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
  GOBIN="$HELM_BIN.tmp" go install -trimpath -ldflags "-s -w \
    -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION \
    -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 \
    -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$minor \
    -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 \
    -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$minor" \
    "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
  rm -rf "$HELM_BIN" && mv "$HELM_BIN.tmp" "$HELM_BIN"
}

# CoreDNS serves cluster DNS to the node's pods (Service names such as outbox-kafka), as
# on kind. Its module has no replace lines, so `go install` builds it as published.
build_coredns() {
  [ -x "$COREDNS_BIN/coredns" ] && { log "coredns $COREDNS_VERSION: cached"; return 0; }
  log "coredns $COREDNS_VERSION: building from Go modules"
  mkdir -p "$COREDNS_BIN.tmp"
  GOBIN="$COREDNS_BIN.tmp" go install -trimpath -ldflags "-s -w" "github.com/coredns/coredns@$COREDNS_VERSION"
  rm -rf "$COREDNS_BIN" && mv "$COREDNS_BIN.tmp" "$COREDNS_BIN"
}

# Prometheus and promtool: the scrape of the node's pods, the chart's rules and their
# `promtool test rules` tests. The module has no replace lines, so `go install` builds it
# as published. Upstream's build tags leave out every service discovery but Kubernetes'
# (the cloud SDKs are most of the build: cold about 6 min on 2 cores instead of 14).
# The version string is set as upstream's release build sets it.
build_prometheus() {
  [ -x "$PROMETHEUS_BIN/prometheus" ] && [ -x "$PROMETHEUS_BIN/promtool" ] &&
    { log "prometheus $PROMETHEUS_VERSION: cached"; return 0; }
  log "prometheus $PROMETHEUS_VERSION: building prometheus and promtool from Go modules"
  mkdir -p "$PROMETHEUS_BIN.tmp"
  GOBIN="$PROMETHEUS_BIN.tmp" go install -trimpath -tags remove_all_sd,enable_kubernetes_sd -ldflags "-s -w \
    -X github.com/prometheus/common/version.Version=$PROMETHEUS_VERSION" \
    "github.com/prometheus/prometheus/cmd/prometheus@$PROMETHEUS_VERSION" \
    "github.com/prometheus/prometheus/cmd/promtool@$PROMETHEUS_VERSION"
  rm -rf "$PROMETHEUS_BIN" && mv "$PROMETHEUS_BIN.tmp" "$PROMETHEUS_BIN"
}

# module_dir MODULE@VERSION: the module downloaded through the Go module proxy (read-only,
# in the module cache); its directory on stdout.
module_dir() {
  (cd "$CACHE_DIR" && go mod download -json "$1") | python3 -c 'import json, sys; print(json.load(sys.stdin)["Dir"])'
}

# CRD files as a project publishes them in its Go module, copied once into DEST (marked
# complete, so a cached copy is used): LABEL DEST MODULE@VERSION FILE... (paths in it).
crds_from_module() {
  local label=$1 dest=$2 module=$3 dir file
  shift 3
  [ -f "$dest/.complete" ] && { log "$label: cached"; return 0; }
  log "$label: from its Go module"
  dir=$(module_dir "$module")
  rm -rf "$dest" && mkdir -p "$dest"
  for file in "$@"; do cp "$dir/$file" "$dest/"; done
  touch "$dest/.complete"
}

# The three monitoring.coreos.com CRDs the chart can create objects of, as the Prometheus
# Operator publishes them in its module (example/prometheus-operator-crd).
build_monitoring_crds() {
  local kind files=()
  for kind in podmonitors servicemonitors prometheusrules; do
    files+=("example/prometheus-operator-crd/monitoring.coreos.com_$kind.yaml")
  done
  crds_from_module "prometheus-operator CRDs $PROMETHEUS_OPERATOR_VERSION" "$MONITORING_CRDS" \
    "github.com/prometheus-operator/prometheus-operator@$PROMETHEUS_OPERATOR_VERSION" "${files[@]}"
}

# KEDA's ScaledObject CRD as KEDA publishes it in its module (config/crd/bases).
build_keda_crds() {
  crds_from_module "KEDA CRDs $KEDA_VERSION" "$KEDA_CRDS" "github.com/kedacore/keda/v2@$KEDA_VERSION" \
    config/crd/bases/keda.sh_scaledobjects.yaml
}

# KEDA's operator and metrics API server (not built by default: nothing runs them yet).
# Its go.mod has replace directives, so `go install module@version` refuses it: it is
# built inside a writable copy of the downloaded module.
build_keda() {
  [ -x "$KEDA_BIN/keda" ] && [ -x "$KEDA_BIN/keda-adapter" ] && { log "KEDA $KEDA_VERSION: cached"; return 0; }
  log "KEDA $KEDA_VERSION: building its operator and metrics API server from its Go module (cold: about 10 min)"
  local dir work
  dir=$(module_dir "github.com/kedacore/keda/v2@$KEDA_VERSION")
  work=$(mktemp -d)
  cp -r "$dir/." "$work/" && chmod -R u+w "$work"
  mkdir -p "$KEDA_BIN.tmp"
  (cd "$work" && go build -trimpath -ldflags "-s -w" -o "$KEDA_BIN.tmp/keda" ./cmd/operator &&
    go build -trimpath -ldflags "-s -w" -o "$KEDA_BIN.tmp/keda-adapter" ./cmd/adapter) || { rm -rf "$work"; return 1; }
  rm -rf "$work" "$KEDA_BIN" && mv "$KEDA_BIN.tmp" "$KEDA_BIN"
}

build_kafka() {
  local dest=$CACHE_DIR/kafka-$KAFKA_VERSION
  [ -f "$dest/.complete" ] && { log "kafka $KAFKA_VERSION: cached"; return 0; }
  log "kafka $KAFKA_VERSION: resolving jars from Maven Central"
  rm -rf "$dest" && mkdir -p "$dest"
  mvn -q -B -f "$TESTBED_DIR/kafka/pom.xml" -Dkafka.version="$KAFKA_VERSION" \
    -Dmaven.repo.local="$CACHE_DIR/m2" \
    dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$dest/lib"
  touch "$dest/.complete"
}

build_one() {
  local c=$1
  if ! "build_$c"; then
    die "building $c failed (see the output above)"
  fi
}

components=("$@")
[ ${#components[@]} -gt 0 ] || components=(kafka etcd helm coredns kubernetes prometheus monitoring_crds keda_crds)
for c in "${components[@]}"; do build_one "$c"; done
