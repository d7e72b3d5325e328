#!/usr/bin/env bash
# Builds the operator and worker images from the Rust binaries in BIN_DIR (see
# testbed/node/images.sh) and imports them into the node's containerd under the names
# the chart and the operator use (ghcr.io/outbox-dev/outbox-{operator,worker}:VERSION),
# so that with imagePullPolicy IfNotPresent nothing is pulled.
# Usage: testbed/load-images.sh BIN_DIR   (e.g. "$CARGO_TARGET_DIR/release")
. "$(dirname "$0")/lib.sh"
# shellcheck source=node.sh
. "$TESTBED_DIR/node.sh"

bin_dir=${1:?usage: testbed/load-images.sh BIN_DIR}
[ -x "$bin_dir/operator" ] && [ -x "$bin_dir/outbox-worker" ] ||
  die "$bin_dir has no operator and outbox-worker binaries: cargo build -p outbox-operator -p outbox-workers --bins"
[ -S "$CTRD_SOCK" ] || die "the testbed's node is not running (no $CTRD_SOCK): make testbed-up"
version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$REPO_ROOT/Cargo.toml" | head -n1)
out=$CACHE_DIR/images/$(basename "$bin_dir")
"$TESTBED_DIR/node/images.sh" "$out" "$bin_dir" "$version" 2>>"$LOG_DIR/images.log"
for image in outbox-operator outbox-worker; do
  ctr_ images import --base-name "ghcr.io/outbox-dev/$image" "$out/$image.tar" >>"$LOG_DIR/images.log" 2>&1 ||
    die "importing $image failed; see $LOG_DIR/images.log"
done
log "images: ghcr.io/outbox-dev/outbox-operator:$version and outbox-worker:$version from $bin_dir imported into the node"
