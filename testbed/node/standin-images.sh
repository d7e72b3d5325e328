#!/usr/bin/env bash
# Assembles stand-ins for the two images manifests/kind/ runs, under exactly their names,
# from the same software, so the kind manifests run unchanged on the testbed's node:
#
#   OUT_DIR/kafka.tar     docker.io/apache/kafka:3.9.1
#       Kafka 3.9.1's jars from Maven Central (the testbed's KAFKA_LIB), Debian's JRE 17,
#       bash, and an entrypoint (/etc/kafka/docker/run) that honours the upstream image's
#       environment contract: every KAFKA_* variable becomes a server property (the prefix
#       dropped, lower-cased, "_" -> ".", "__" -> "-", "___" -> "_"), except the JVM and
#       logging ones, which set the JVM as in the upstream image (KAFKA_HEAP_OPTS default
#       -Xmx1G -Xms1G, KAFKA_OPTS, ...); CLUSTER_ID (default the upstream image's
#       5L6g3nShT-eMCtK--X86sw) formats the log dirs on first start. User appuser, 1000.
#   OUT_DIR/postgres.tar  docker.io/library/postgres:15-bookworm
#       Debian's PostgreSQL 15 server binaries (the same Debian release the upstream image
#       is built on), bash, and an entrypoint (docker-entrypoint.sh) with the upstream
#       contract: on an empty PGDATA, initdb with POSTGRES_USER (default postgres) and
#       POSTGRES_PASSWORD (required), POSTGRES_INITDB_ARGS, `host all all all
#       scram-sha-256` in pg_hba.conf, listen_addresses '*', POSTGRES_DB (default the
#       user) created; arguments starting with "-" go to postgres. User postgres, 999.
#       pg_isready and every server binary on PATH.
#
# What they do not carry: the upstream images' other files (a full Debian or Alpine
# userland, gosu, the initdb.d hook scripts, Kafka's shell scripts and SSL helpers); the
# locale is C.UTF-8 rather than en_US.utf8. See docs/kind.md.
#
# Usage: testbed/node/standin-images.sh OUT_DIR KAFKA_LIB
# Idempotent like images.sh: a tarball newer than this script and its inputs is kept.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SCRIPT=$SCRIPT_DIR/$(basename "${BASH_SOURCE[0]}")
log() { printf '[standin-images] %s\n' "$*" >&2; }
die() { printf '[standin-images] error: %s\n' "$*" >&2; exit 1; }

[ $# -eq 2 ] || die "usage: $0 OUT_DIR KAFKA_LIB"
OUT_DIR=$1 KAFKA_LIB=$2
ls "$KAFKA_LIB"/kafka_2.13-*.jar >/dev/null 2>&1 || die "$KAFKA_LIB holds no Kafka jars: make testbed-build"
for tool in umoci ldd tar jq; do
  command -v "$tool" >/dev/null || die "$tool not found"
done
# Debian's JRE 17 and PostgreSQL 15 (both installed for the testbed's host processes).
JAVA_HOME=$(dirname "$(dirname "$(readlink -f "$(command -v java)")")")
"$JAVA_HOME/bin/java" -version 2>&1 | grep -q 'version "17' || die "java at $JAVA_HOME is not Java 17"
PG_BIN=/usr/lib/postgresql/15/bin
[ -x "$PG_BIN/postgres" ] || die "PostgreSQL 15's server binaries are not in $PG_BIN (Debian's postgresql-15)"
mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
# shellcheck source=image-lib.sh
. "$SCRIPT_DIR/image-lib.sh"

KAFKA_TAG=3.9.1
POSTGRES_TAG=15-bookworm

# add_with_libs ROOTFS FILE...: each FILE at its own path under ROOTFS, with its ldd
# closure; a shared object whose own libraries this machine lacks (the JRE's desktop
# parts, never loaded by a headless server) is copied without its closure.
add_with_libs() {
  local rootfs=$1 file out lib
  shift
  for file in "$@"; do
    replicate "$rootfs" "$file"
    out=$(ldd "$file" 2>&1) || true
    case $out in *"not a dynamic executable"* | *"statically linked"* | *"not found"*) continue ;; esac
    for lib in $(ldd_paths <<<"$out"); do
      replicate "$rootfs" "$lib"
    done
  done
}

add_bash() { # /bin/bash with its libraries, /bin/sh pointing at it
  local rootfs=$1
  add_with_libs "$rootfs" /bin/bash
  [ -e "$rootfs/bin/sh" ] || ln -s bash "$rootfs/bin/sh"
}

populate_kafka() {
  local rootfs=$1 f
  add_bash "$rootfs"
  # The JRE: bin/java, lib (modules, the VM, its native libraries), conf; links into /etc
  # (jvm.cfg, security files) resolved, links to files this machine lacks left out.
  mkdir -p "$rootfs$JAVA_HOME"
  (cd "$JAVA_HOME" && find lib conf -xtype l) >"$WORK/dangling"
  tar -C "$JAVA_HOME" --dereference --exclude-from="$WORK/dangling" \
    --exclude=lib/src.zip --exclude=lib/ct.sym -cf - bin/java lib conf release |
    tar -C "$rootfs$JAVA_HOME" -xf -
  while IFS= read -r f; do
    add_with_libs "$rootfs" "$f"
  done < <(find "$JAVA_HOME/bin/java" "$JAVA_HOME/lib" -type f \( -name java -o -name '*.so' \))
  mkdir -p "$rootfs/opt/kafka/libs" "$rootfs/opt/kafka/config" "$rootfs/var/lib/kafka/data" \
    "$rootfs/etc/kafka/docker"
  cp "$KAFKA_LIB"/*.jar "$rootfs/opt/kafka/libs/"
  cp "$SCRIPT_DIR/../kafka/log4j.properties" "$rootfs/opt/kafka/config/log4j.properties"
  cat >"$rootfs/etc/kafka/docker/run" <<'EOF'
#!/bin/bash
# Stand-in for apache/kafka's entrypoint (testbed/node/standin-images.sh): KAFKA_* to
# server.properties, format the log dirs once, run the broker in the foreground.
set -euo pipefail
config=/opt/kafka/config/server.properties
jvm_settings=" KAFKA_VERSION KAFKA_HEAP_OPTS KAFKA_LOG4J_OPTS KAFKA_OPTS KAFKA_JMX_OPTS
  KAFKA_JVM_PERFORMANCE_OPTS KAFKA_GC_LOG_OPTS KAFKA_LOG4J_ROOT_LOGLEVEL KAFKA_LOG4J_LOGGERS
  KAFKA_TOOLS_LOG4J_LOGLEVEL KAFKA_JMX_HOSTNAME KAFKA_JMX_PORT "
: >"$config"
for name in $(compgen -e); do
  [[ $name == KAFKA_* ]] || continue
  [[ $jvm_settings == *[[:space:]]$name[[:space:]]* ]] && continue
  key=${name#KAFKA_}
  key=${key,,}
  key=${key//___/$'\x01'}
  key=${key//__/-}
  key=${key//_/.}
  key=${key//$'\x01'/_}
  printf '%s=%s\n' "$key" "${!name}" >>"$config"
done
# shellcheck disable=SC2206 # the JVM options are word lists, as in kafka-run-class.sh
java=(java ${KAFKA_HEAP_OPTS:--Xmx1G -Xms1G}
  ${KAFKA_JVM_PERFORMANCE_OPTS:--server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent -XX:MaxInlineLevel=15 -Djava.awt.headless=true}
  ${KAFKA_LOG4J_OPTS:--Dlog4j.configuration=file:/opt/kafka/config/log4j.properties}
  ${KAFKA_OPTS:-} -cp '/opt/kafka/libs/*')
"${java[@]}" kafka.tools.StorageTool format --cluster-id "${CLUSTER_ID:-5L6g3nShT-eMCtK--X86sw}" \
  --config "$config" --ignore-formatted
exec "${java[@]}" kafka.Kafka "$config"
EOF
  chmod 0755 "$rootfs/etc/kafka/docker/run"
  minimal_etc "$rootfs" appuser 1000 /home/appuser
  if [ "$(id -u)" -eq 0 ]; then
    chown -R 1000:1000 "$rootfs/opt/kafka/config" "$rootfs/var/lib/kafka"
  fi
}

populate_postgres() {
  local rootfs=$1 f
  add_bash "$rootfs"
  while IFS= read -r f; do
    add_with_libs "$rootfs" "$f"
  done < <(find "$PG_BIN" /usr/lib/postgresql/15/lib -type f -not -path '*/bitcode/*' -not -name 'llvmjit*')
  # (No JIT: llvmjit.so would bring LLVM's 100 MB; PostgreSQL runs without it.)
  mkdir -p "$rootfs/usr/share/postgresql/15"
  cp -a /usr/share/postgresql/15/. "$rootfs/usr/share/postgresql/15/"
  # Time zones (Debian builds PostgreSQL with the system's tzdata) and the C.UTF-8 locale.
  mkdir -p "$rootfs/usr/share" "$rootfs/usr/lib/locale"
  cp -a /usr/share/zoneinfo "$rootfs/usr/share/"
  if [ -d /usr/lib/locale/C.utf8 ]; then cp -a /usr/lib/locale/C.utf8 "$rootfs/usr/lib/locale/"; fi
  mkdir -p "$rootfs/usr/local/bin" "$rootfs/var/lib/postgresql/data" "$rootfs/var/run/postgresql"
  cat >"$rootfs/usr/local/bin/docker-entrypoint.sh" <<'EOF'
#!/bin/bash
# Stand-in for the postgres image's entrypoint (testbed/node/standin-images.sh).
set -euo pipefail
if [ "${1:0:1}" = - ]; then set -- postgres "$@"; fi
if [ "$1" = postgres ] && [ ! -s "$PGDATA/PG_VERSION" ]; then
  if [ -z "${POSTGRES_PASSWORD:-}" ]; then
    echo "error: database is uninitialized and superuser password is not specified (POSTGRES_PASSWORD)" >&2
    exit 1
  fi
  user=${POSTGRES_USER:-postgres}
  db=${POSTGRES_DB:-$user}
  # shellcheck disable=SC2086 # POSTGRES_INITDB_ARGS is a word list, as upstream
  initdb --username="$user" --pwfile=<(printf '%s\n' "$POSTGRES_PASSWORD") -D "$PGDATA" \
    ${POSTGRES_INITDB_ARGS:-}
  printf '\nhost all all all scram-sha-256\n' >>"$PGDATA/pg_hba.conf"
  printf "\nlisten_addresses = '*'\n" >>"$PGDATA/postgresql.conf"
  if [ "$db" != postgres ]; then
    printf 'CREATE DATABASE "%s";\n' "${db//\"/\"\"}" | postgres --single -D "$PGDATA" postgres >/dev/null
  fi
  echo "PostgreSQL init process complete; ready for start up."
fi
exec "$@"
EOF
  chmod 0755 "$rootfs/usr/local/bin/docker-entrypoint.sh"
  minimal_etc "$rootfs" postgres 999 /var/lib/postgresql
  chmod 0755 "$rootfs/var/lib/postgresql"
  chmod 2777 "$rootfs/var/run/postgresql"
  chmod 0777 "$rootfs/var/lib/postgresql/data"
  if [ "$(id -u)" -eq 0 ]; then
    chown -R 999:999 "$rootfs/var/lib/postgresql" "$rootfs/var/run/postgresql"
  fi
}

out=$OUT_DIR/kafka.tar
if up_to_date "$out" "$KAFKA_TAG" "$KAFKA_LIB" "$SCRIPT_DIR/../kafka/log4j.properties"; then
  log "kafka.tar (docker.io/apache/kafka:$KAFKA_TAG): cached"
else
  log "kafka.tar (docker.io/apache/kafka:$KAFKA_TAG): building from $KAFKA_LIB and $JAVA_HOME"
  build_image "$out" "$KAFKA_TAG" populate_kafka \
    --config.entrypoint /etc/kafka/docker/run --config.user 1000:1000 --config.workingdir / \
    --config.env "PATH=$JAVA_HOME/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    --config.env "JAVA_HOME=$JAVA_HOME"
fi

out=$OUT_DIR/postgres.tar
if up_to_date "$out" "$POSTGRES_TAG" "$PG_BIN/postgres"; then
  log "postgres.tar (docker.io/library/postgres:$POSTGRES_TAG): cached"
else
  log "postgres.tar (docker.io/library/postgres:$POSTGRES_TAG): building from $PG_BIN"
  build_image "$out" "$POSTGRES_TAG" populate_postgres \
    --config.entrypoint /usr/local/bin/docker-entrypoint.sh --config.cmd postgres \
    --config.user 999:999 --config.workingdir / \
    --config.env "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PG_BIN" \
    --config.env PGDATA=/var/lib/postgresql/data --config.env LANG=C.UTF-8 \
    --config.stopsignal SIGINT
fi
for image in kafka postgres; do
  log "$(du -h "$OUT_DIR/$image.tar" | cut -f1)  $OUT_DIR/$image.tar"
done
