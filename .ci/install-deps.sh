#!/usr/bin/env bash
# Installs what the build and the testbed need on a fresh machine of this kind (Debian
# bookworm with Go, Rust, Java 17 + Maven preinstalled). Only installs what is missing.
set -euo pipefail
log() { printf '[deps] %s\n' "$*" >&2; }

need_pkgs=()
[ -x /usr/lib/postgresql/15/bin/initdb ] || need_pkgs+=(postgresql-15)
command -v psql >/dev/null || need_pkgs+=(postgresql-client-15)
command -v cmake >/dev/null || need_pkgs+=(cmake)
command -v pkg-config >/dev/null || need_pkgs+=(pkg-config)
command -v openssl >/dev/null || need_pkgs+=(openssl)
command -v curl >/dev/null || need_pkgs+=(curl)
command -v jq >/dev/null || need_pkgs+=(jq)
command -v python3 >/dev/null || need_pkgs+=(python3)
# testbed/chart-values-check.sh reads what helm renders with PyYAML.
python3 -c 'import yaml' 2>/dev/null || need_pkgs+=(python3-yaml)
command -v mvn >/dev/null || need_pkgs+=(maven)
command -v java >/dev/null || need_pkgs+=(openjdk-17-jre-headless)
command -v g++ >/dev/null || need_pkgs+=(g++)
dpkg -s libssl-dev >/dev/null 2>&1 || need_pkgs+=(libssl-dev)
dpkg -s zlib1g-dev >/dev/null 2>&1 || need_pkgs+=(zlib1g-dev)
# The testbed's node: container runtime, CNI plugins, netfilter tools, image assembly.
command -v containerd >/dev/null || need_pkgs+=(containerd)
command -v runc >/dev/null || need_pkgs+=(runc)
[ -x /usr/lib/cni/bridge ] || need_pkgs+=(containernetworking-plugins)
command -v iptables >/dev/null || need_pkgs+=(iptables)
command -v conntrack >/dev/null || need_pkgs+=(conntrack)
command -v nft >/dev/null || need_pkgs+=(nftables)
command -v nfacct >/dev/null || need_pkgs+=(nfacct)
command -v umoci >/dev/null || need_pkgs+=(umoci)
command -v ip >/dev/null || need_pkgs+=(iproute2)
[ -f /usr/lib/x86_64-linux-gnu/libc.a ] || need_pkgs+=(libc6-dev)
# The fault matrix enters pods' network namespaces; `make lint` checks the shell scripts.
command -v nsenter >/dev/null || need_pkgs+=(util-linux)
command -v shellcheck >/dev/null || need_pkgs+=(shellcheck)
# The HTML load-test report's test draws the report in a headless chromium; CI checks the
# vendored uPlot against its npm package (scripts/vendor-uplot.sh --check).
[ -x /usr/bin/chromium ] || need_pkgs+=(chromium)
command -v npm >/dev/null || need_pkgs+=(npm)
sudo=()
[ "$(id -u)" = 0 ] || sudo=(sudo)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  log "apt-get install ${need_pkgs[*]}"
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi
# Debian's postgresql package may start a cluster of its own; the testbed runs its own.
command -v go >/dev/null || { log "Go is required (preinstalled on this machine kind)"; exit 1; }
command -v cargo >/dev/null || { log "Rust is required (preinstalled on this machine kind)"; exit 1; }
# The list whole before grep -q: piped, pipefail would count grep's early exit as a miss.
components=$(rustup component list --installed 2>/dev/null || true)
grep -q '^rustfmt' <<<"$components" || rustup component add rustfmt
grep -q '^clippy' <<<"$components" || rustup component add clippy
# `make lint` checks the dependencies' licenses and sources (deny.toml). Built from
# crates.io once, into ~/.cargo/bin; its build output in a cache of its own.
if ! command -v cargo-deny >/dev/null; then
  log "cargo install cargo-deny (once, about 10 minutes on 2 cores)"
  CARGO_TARGET_DIR="$HOME/.cache/outbox-operator/cargo-deny-build" cargo install --quiet --locked cargo-deny@0.20.2
fi
log "all build and testbed dependencies present"
