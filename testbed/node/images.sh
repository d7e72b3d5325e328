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
umask 022 # the image's files and directories must be readable by user 65532

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

# umoci unpack as root keeps file owners (so /home/nonroot can belong to 65532); anyone
# else needs --rootless, where every file ends up owned by root in the image.
UNPACK_OPTS=()
[ "$(id -u)" -eq 0 ] || UNPACK_OPTS=(--rootless)

WORK=$(mktemp -d "${TMPDIR:-/tmp}/outbox-images.XXXXXX")
cleanup() { rm -rf "$WORK"; }
trap cleanup EXIT

# up_to_date TAR TAG INPUT...: TAR exists, is newer than every INPUT and this script, and
# its index names TAG.
up_to_date() {
  local tar=$1 tag=$2 input ref
  shift 2
  [ -f "$tar" ] || return 1
  for input in "$@" "$SCRIPT"; do
    [ "$tar" -nt "$input" ] || return 1
  done
  ref=$(tar -xOf "$tar" ./index.json 2>/dev/null |
    jq -r '.manifests[0].annotations["org.opencontainers.image.ref.name"] // ""' 2>/dev/null) || return 1
  [ "$ref" = "$tag" ]
}

# replicate ROOTFS PATH: recreate host file PATH at the same path under ROOTFS, including
# every symlink met on the way (e.g. merged-/usr's /lib -> usr/lib, or
# /lib64/ld-linux-x86-64.so.2 -> /lib/x86_64-linux-gnu/ld-linux-x86-64.so.2), so the
# same path names resolve in the image. Works one symlink at a time on host paths, never
# writing through a symlink inside ROOTFS.
replicate() {
  local root=$1 rest=${2#/} prefix="" comp target
  while [ -n "$rest" ]; do
    comp=${rest%%/*}
    if [[ $rest == */* ]]; then rest=${rest#*/}; else rest=""; fi
    case $comp in
      "" | .) continue ;;
      ..) prefix=${prefix%/*}; continue ;;
    esac
    prefix+=/$comp
    if [ -L "$prefix" ]; then
      target=$(readlink "$prefix")
      if [ ! -L "$root$prefix" ] && [ ! -e "$root$prefix" ]; then
        ln -s "$target" "$root$prefix"
      fi
      # Continue from the link's target, which may itself hold links.
      [[ $target == /* ]] || target=${prefix%/*}/$target
      rest=${target#/}${rest:+/$rest}
      prefix=""
    elif [ -d "$prefix" ]; then
      [ -n "$rest" ] || die "replicate: $2 is a directory"
      mkdir -p "$root$prefix"
    elif [ -e "$prefix" ]; then
      [ -z "$rest" ] || die "replicate: $prefix in $2 is not a directory"
      [ -e "$root$prefix" ] || cp -p "$prefix" "$root$prefix"
    else
      die "replicate: $2 does not exist"
    fi
  done
}

# lib_closure BINARY: the absolute paths ldd resolves for BINARY, loader included; nothing
# for a static binary.
lib_closure() {
  local out rc=0
  out=$(ldd "$1" 2>&1) || rc=$?
  case $out in
    *"not a dynamic executable"* | *"statically linked"*) return 0 ;;
  esac
  [ "$rc" -eq 0 ] || die "ldd $1 failed: $out"
  if grep -q 'not found' <<<"$out"; then
    die "ldd $1: unresolved libraries:"$'\n'"$(grep 'not found' <<<"$out")"
  fi
  # "libfoo.so.1 => /path/libfoo.so.1 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)";
  # linux-vdso.so.1 has no path.
  awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' <<<"$out" | sort -u
}

# build_image OUT_TAR TAG POPULATE_FN CONFIG_ARG...: a one-layer image whose rootfs is
# filled by `POPULATE_FN ROOTFS`, configured by umoci config CONFIG_ARGs, written as an
# OCI-layout tarball tagged TAG.
build_image() {
  local out=$1 tag=$2 populate=$3 name layout bundle
  shift 3
  name=$(basename "$out" .tar)
  layout=$WORK/$name/layout
  bundle=$WORK/$name/bundle
  mkdir -p "$WORK/$name"
  umoci init --layout "$layout"
  umoci new --image "$layout:$tag"
  umoci unpack "${UNPACK_OPTS[@]}" --image "$layout:$tag" "$bundle"
  "$populate" "$bundle/rootfs"
  umoci repack --image "$layout:$tag" \
    --history.created_by "testbed/node/images.sh: $populate" "$bundle"
  umoci config --image "$layout:$tag" --os linux --architecture amd64 \
    --history.created_by "testbed/node/images.sh: config" "$@"
  umoci gc --layout "$layout"
  tar -C "$layout" -cf "$out.tmp" .
  mv "$out.tmp" "$out"
}

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
  mkdir -p "$rootfs/etc"
  cat >"$rootfs/etc/passwd" <<EOF
root:x:0:0:root:/root:/sbin/nologin
nonroot:x:$NONROOT:$NONROOT:nonroot:/home/nonroot:/sbin/nologin
EOF
  cat >"$rootfs/etc/group" <<EOF
root:x:0:
nonroot:x:$NONROOT:
EOF
  printf 'passwd: files\ngroup: files\nhosts: files dns\n' >"$rootfs/etc/nsswitch.conf"
  chmod 0644 "$rootfs/etc/passwd" "$rootfs/etc/group" "$rootfs/etc/nsswitch.conf"
  mkdir -p "$rootfs/tmp" "$rootfs/root" "$rootfs/home/nonroot"
  chmod 1777 "$rootfs/tmp"
  chmod 0700 "$rootfs/root" "$rootfs/home/nonroot"
  if [ "$(id -u)" -eq 0 ]; then
    chown "$NONROOT:$NONROOT" "$rootfs/home/nonroot"
  fi
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
