#!/usr/bin/env bash
# Assembles the testbed node's container images with umoci (no Docker, no registry) and
# writes each as an OCI image-layout tarball that containerd imports directly.
#
# Usage: testbed/node/images.sh OUT_DIR [BIN_DIR VERSION]
#   OUT_DIR  where the tarballs go (created if missing); only pause.tar without BIN_DIR
#   BIN_DIR  holds the Rust binaries `operator` and `outbox-worker` (e.g. target/release)
#   VERSION  image tag of both binaries' images, e.g. 0.1.0
#
# Writes:
#   OUT_DIR/pause.tar            registry.k8s.io/pause:3.10                 (static pause.c at /pause)
#   OUT_DIR/outbox-worker.tar    ghcr.io/outbox-dev/outbox-worker:VERSION   (mirrors workers/Dockerfile)
#   OUT_DIR/outbox-operator.tar  ghcr.io/outbox-dev/outbox-operator:VERSION (mirrors operator/Dockerfile)
#
# Each tarball is an OCI layout whose index.json names its one manifest with only the tag
# (annotation org.opencontainers.image.ref.name = "3.10" / VERSION), so the repository part
# comes from the import command. `ctr images import --base-name B` turns a tag-only ref T
# into "B:T" and skips refs that are full names not under B (containerd
# images/archive/reference.go, FilterRefPrefix). The import commands are therefore exactly:
#   ctr -n k8s.io images import --base-name registry.k8s.io/pause                OUT_DIR/pause.tar
#   ctr -n k8s.io images import --base-name ghcr.io/outbox-dev/outbox-worker     OUT_DIR/outbox-worker.tar
#   ctr -n k8s.io images import --base-name ghcr.io/outbox-dev/outbox-operator   OUT_DIR/outbox-operator.tar
# (plus --address SOCKET for a containerd not on the default socket). Without --base-name
# ctr would name them import-YYYY-MM-DD:TAG.
#
# The binaries' images differ from their Dockerfiles' on purpose: instead of
# debian:bookworm-slim + ca-certificates + libssl3 they hold only the binary, its `ldd`
# library closure copied from this machine, the CA bundle and OpenSSL's default paths, and
# a minimal /etc (passwd/group with root and nonroot 65532, nsswitch.conf). The binary was
# built on this machine against these very libraries, so the closure always matches it.
#
# Idempotent: a tarball newer than its inputs (binary or pause.c) and this script, and
# already carrying the wanted tag, is kept ("cached").
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SCRIPT=$SCRIPT_DIR/$(basename "${BASH_SOURCE[0]}")

PAUSE_IMAGE=registry.k8s.io/pause
PAUSE_TAG=3.10
IMAGE_REPO=ghcr.io/outbox-dev
NONROOT=65532
# debian:bookworm-slim's PATH, which both Dockerfile images inherit.
DEFAULT_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

log() { printf '[images] %s\n' "$*" >&2; }
die() { printf '[images] error: %s\n' "$*" >&2; exit 1; }

[ $# -eq 3 ] || [ $# -eq 1 ] || die "usage: $0 OUT_DIR [BIN_DIR VERSION]"
OUT_DIR=$1 BIN_DIR=${2:-} VERSION=${3:-}
if [ -n "$BIN_DIR" ]; then
  [ -d "$BIN_DIR" ] || die "BIN_DIR $BIN_DIR is not a directory"
  [[ $VERSION =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$ ]] || die "VERSION $VERSION is not a valid image tag"
fi
for tool in umoci gcc ldd tar jq; do
  command -v "$tool" >/dev/null || die "$tool not found"
done
mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
[ -z "$BIN_DIR" ] || BIN_DIR=$(cd "$BIN_DIR" && pwd)
# shellcheck source=image-lib.sh
. "$SCRIPT_DIR/image-lib.sh"

populate_pause() {
  local rootfs=$1
  install -m 0755 "$WORK/pause.bin" "$rootfs/pause"
}

# The common part of the two binaries' images (debian:bookworm-slim's role).
populate_base() {
  local rootfs=$1 bin=$2 dest=$3 libs lib
  mkdir -p "$rootfs${dest%/*}"
  install -m 0755 "$bin" "$rootfs$dest"
  libs=$(lib_closure "$bin") # not in a pipe: lib_closure's die must stop the script
  for lib in $libs; do
    replicate "$rootfs" "$lib"
  done
  # CA bundle at Debian's path, plus OpenSSL's compiled-in defaults (/usr/lib/ssl/cert.pem,
  # certs, openssl.cnf: links into /etc/ssl) that librdkafka and openssl-probe look at.
  replicate "$rootfs" /etc/ssl/certs/ca-certificates.crt
  local f
  for f in /usr/lib/ssl/certs/ca-certificates.crt /usr/lib/ssl/cert.pem \
    /etc/ssl/openssl.cnf /usr/lib/ssl/openssl.cnf; do
    if [ -e "$f" ]; then replicate "$rootfs" "$f"; fi
  done
  minimal_etc "$rootfs" nonroot "$NONROOT" /home/nonroot
}

populate_worker() { populate_base "$1" "$BIN_DIR/outbox-worker" /usr/local/bin/outbox-worker; }
populate_operator() { populate_base "$1" "$BIN_DIR/operator" /usr/local/bin/operator; }

# --- pause -------------------------------------------------------------------------------
out=$OUT_DIR/pause.tar
if up_to_date "$out" "$PAUSE_TAG" "$SCRIPT_DIR/pause.c"; then
  log "pause.tar ($PAUSE_IMAGE:$PAUSE_TAG): cached"
else
  log "pause.tar ($PAUSE_IMAGE:$PAUSE_TAG): building"
  gcc -static -Os -s -o "$WORK/pause.bin" "$SCRIPT_DIR/pause.c"
  # Same config as the upstream image: entrypoint /pause, user 65535:65535.
  build_image "$out" "$PAUSE_TAG" populate_pause \
    --config.entrypoint /pause --config.user 65535:65535 --config.workingdir /
fi

# --- outbox-worker, outbox-operator --------------------------------------------------------
[ -n "$BIN_DIR" ] || exit 0
for spec in outbox-worker:outbox-worker:populate_worker operator:outbox-operator:populate_operator; do
  IFS=: read -r bin image populate <<<"$spec"
  out=$OUT_DIR/$image.tar
  if [ ! -f "$BIN_DIR/$bin" ] || [ ! -x "$BIN_DIR/$bin" ]; then
    die "$BIN_DIR/$bin: no such executable"
  fi
  if up_to_date "$out" "$VERSION" "$BIN_DIR/$bin"; then
    log "$image.tar ($IMAGE_REPO/$image:$VERSION): cached"
    continue
  fi
  log "$image.tar ($IMAGE_REPO/$image:$VERSION): building from $BIN_DIR/$bin"
  # As in the Dockerfile: USER 65532:65532, ENTRYPOINT ["/usr/local/bin/BIN"], no CMD,
  # WORKDIR unset (= /), PATH from the Debian base.
  build_image "$out" "$VERSION" "$populate" \
    --config.entrypoint "/usr/local/bin/$bin" --config.user "$NONROOT:$NONROOT" \
    --config.workingdir / --config.env "PATH=$DEFAULT_PATH"
done

for image in pause outbox-worker outbox-operator; do
  log "$(du -h "$OUT_DIR/$image.tar" | cut -f1)  $OUT_DIR/$image.tar"
done
log "differs from the Dockerfile images: ldd library closure of this machine + CA bundle + minimal /etc (passwd/group with nonroot $NONROOT, nsswitch.conf) instead of debian:bookworm-slim with apt's ca-certificates and libssl3; no shell or other Debian files; not multi-stage built, binaries from $BIN_DIR"
