# Shared by the image scripts (images.sh, standin-images.sh): assembling one-layer OCI
# images with umoci from files of this machine. Sourced, not run; expects log, die, SCRIPT
# (the sourcing script, an input of every image) and OUT_DIR to be set.
# shellcheck shell=bash
umask 022 # the image's files and directories must be readable by their non-root users

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
  for input in "$@" "$SCRIPT" "${BASH_SOURCE[0]}"; do
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

# ldd_paths: the absolute library paths in ldd's output on stdin, loader included:
# "libfoo.so.1 => /path/libfoo.so.1 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)";
# linux-vdso.so.1 has no path.
ldd_paths() {
  awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' | sort -u
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
  ldd_paths <<<"$out"
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


# minimal_etc ROOTFS USER UID HOME: /etc/passwd and /etc/group with root and USER (uid and
# gid UID, home HOME, owned by it), nsswitch.conf, a world-writable /tmp.
minimal_etc() {
  local rootfs=$1 user=$2 uid=$3 home=$4
  mkdir -p "$rootfs/etc"
  cat >"$rootfs/etc/passwd" <<EOF
root:x:0:0:root:/root:/sbin/nologin
$user:x:$uid:$uid:$user:$home:/sbin/nologin
EOF
  cat >"$rootfs/etc/group" <<EOF
root:x:0:
$user:x:$uid:
EOF
  printf 'passwd: files\ngroup: files\nhosts: files dns\n' >"$rootfs/etc/nsswitch.conf"
  chmod 0644 "$rootfs/etc/passwd" "$rootfs/etc/group" "$rootfs/etc/nsswitch.conf"
  mkdir -p "$rootfs/tmp" "$rootfs/root" "$rootfs$home"
  chmod 1777 "$rootfs/tmp"
  chmod 0700 "$rootfs/root" "$rootfs$home"
  if [ "$(id -u)" -eq 0 ]; then
    chown "$uid:$uid" "$rootfs$home"
  fi
}
