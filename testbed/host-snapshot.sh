#!/usr/bin/env bash
# Prints what the testbed's node may change on this machine, one fact per line, so that
# a snapshot before `up` and one after `down` can be diffed (.ci/run does): sysctls,
# network links, iptables chains and rules, nft tables, nfacct objects, mounts,
# /kubepods cgroups, host paths, and processes of the node's programs.
. "$(dirname "$0")/lib.sh"
# shellcheck source=node.sh
. "$TESTBED_DIR/node.sh"
# A fact that is absent is a line not printed, not an error.
set +e +o pipefail

for k in "${NODE_SYSCTLS[@]}"; do echo "sysctl $k=$(sysctl -n "$k" 2>/dev/null)"; done
ip -o link show 2>/dev/null | awk -F': ' '{print "link " $2}' | sed 's/@.*//' | sort
for save in iptables-save ip6tables-save; do
  command -v "$save" >/dev/null || continue
  "$save" 2>/dev/null | grep -v '^#' | sed 's/\[[0-9]*:[0-9]*\]//' | sed "s/^/$save /"
done
command -v nft >/dev/null && nft list tables 2>/dev/null | sed 's/^/nft /'
command -v nfacct >/dev/null && nfacct_names | sed 's/^/nfacct /'
awk '$2 ~ /kubelet|containerd|netns|\.testbed|kubepods|cni/ {print "mount " $2}' /proc/self/mounts | sort
find "$CGROUP_ROOT" -maxdepth 2 -name kubepods -type d 2>/dev/null | sed 's/^/cgroup /' | sort
[ -d "$SERVICE_CGROUPS" ] && echo "cgroup $SERVICE_CGROUPS"
for p in "${NODE_HOST_PATHS[@]}"; do [ -e "$p" ] && echo "path $p"; done
# pgrep -x compares with the process name, which the kernel cuts at 15 characters: the
# shims' is containerd-shim (their whole name never matched, so leftover shims went unseen).
for prog in containerd containerd-shim-runc-v2 kubelet kube-proxy kube-scheduler coredns pause; do
  pgrep -x "${prog:0:15}" >/dev/null 2>&1 && echo "process $prog"
done
true
