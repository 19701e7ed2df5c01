#!/usr/bin/env bash
# Runs a five-node ringkv ring in Docker containers (compose/docker-compose.yml).
#
#   compose/up.sh [up]     build the static binary and the image, start n1..n5, and wait
#                          until all five are healthy (ready) and n1 sees five alive members
#   compose/up.sh down     stop and remove the ring's containers and network (data volumes
#                          stay; `down -v` removes them too)
#   compose/up.sh build    only build the binary and the image
#   compose/up.sh roll [nX ...]
#                          rolling upgrade (or rollback): build the binary and the image, then
#                          recreate one node at a time on it (SIGTERM, new container, same data
#                          volume), waiting until each is healthy (ready) before the next
#   compose/up.sh ARGS...  any other compose command on the ring, e.g. `ps`, `logs n1`,
#                          `stop n2 n3`, `start n2 n3` (with the same project and variables)
#
# The image is FROM scratch: the binary is linked statically (glibc, +crt-static), so the
# image needs no base image and no registry. Nodes publish HTTP on 127.0.0.1:8001..8005.
#
# Environment (all optional):
#   RINGKV_PROJECT      compose project name (default ringkv); two names, two rings
#   RINGKV_PORT_BASE    host port of n1's HTTP API; node i gets base+i-1 (default 8001)
#   RINGKV_NET          first three octets of the ring's /24 network (default 172.28.213)
#   RINGKV_IMAGE        image tag (default ringkv:local)
#   RINGKV_BINARY       a static ringkv binary to put in the image instead of building one
#   RINGKV_SKIP_BUILD=1 use the image as it is (`up`): no cargo, no docker build
#   RINGKV_UP_TIMEOUT   seconds to wait for five healthy nodes (default 180)
#   COMPOSE             the compose command, e.g. "docker-compose" (default: `docker compose`
#                       if that works, else docker-compose)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
compose_file="$here/docker-compose.yml"
target=x86_64-unknown-linux-gnu
binary="${RINGKV_BINARY:-$repo/target/$target/release/ringkv}"

export RINGKV_PROJECT="${RINGKV_PROJECT:-ringkv}"
export RINGKV_IMAGE="${RINGKV_IMAGE:-ringkv:local}"
export RINGKV_NET="${RINGKV_NET:-172.28.213}"
port_base="${RINGKV_PORT_BASE:-8001}"
for i in 1 2 3 4 5; do
    export "RINGKV_PORT_$i=$((port_base + i - 1))"
done
up_timeout="${RINGKV_UP_TIMEOUT:-180}"
# Where this host reaches the published ports.
host_addr="${RINGKV_PUBLISH_ADDR:-127.0.0.1}"
[[ "$host_addr" != 0.0.0.0 ]] || host_addr=127.0.0.1

log() { printf '[up.sh %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# `docker compose` (v2 plugin) when it works, else the v1 `docker-compose` binary.
if [[ -n "${COMPOSE:-}" ]]; then
    read -r -a compose_cmd <<<"$COMPOSE"
elif docker compose version >/dev/null 2>&1; then
    compose_cmd=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
    compose_cmd=(docker-compose)
else
    die "neither 'docker compose' nor 'docker-compose' is available"
fi
compose() { "${compose_cmd[@]}" -f "$compose_file" -p "$RINGKV_PROJECT" "$@"; }

build() {
    local t0=$SECONDS
    if [[ -n "${RINGKV_BINARY:-}" ]]; then
        log "using the binary $binary (RINGKV_BINARY): no cargo build"
    else
        log "building the static binary (cargo build --release --target $target, +crt-static)"
        # One cargo build at a time on this machine: wait for the shared lock.
        (cd "$repo" && RUSTFLAGS='-C target-feature=+crt-static' \
            flock /tmp/ringkv-cargo.lock cargo build --release --target "$target" --bin ringkv)
    fi
    [[ -x "$binary" ]] || die "no binary at $binary"
    if command -v file >/dev/null && ! file "$binary" | grep -q 'static'; then
        die "$binary is not statically linked: a FROM scratch image cannot run it"
    fi
    # A small build context: the Dockerfile and the binary, not the whole repository.
    local ctx old new
    ctx="$(mktemp -d)"
    cp "$here/Dockerfile" "$binary" "$ctx/"
    # An empty directory that becomes the image's /data, owned by the node's user: a named
    # volume mounted there starts with its ownership, so the node can write its data dir.
    mkdir "$ctx/data"
    old="$(docker image inspect -f '{{.Id}}' "$RINGKV_IMAGE" 2>/dev/null || true)"
    log "building the image $RINGKV_IMAGE (FROM scratch)"
    # The legacy builder: it needs no buildx plugin (BuildKit would), and FROM scratch needs
    # nothing else. Its deprecation notice is only shown when the build fails.
    if ! DOCKER_BUILDKIT=0 docker build -q -t "$RINGKV_IMAGE" "$ctx" >"$ctx/build.log" 2>&1; then
        cat "$ctx/build.log" >&2
        rm -rf "$ctx"
        die "docker build failed"
    fi
    rm -rf "$ctx"
    new="$(docker image inspect -f '{{.Id}}' "$RINGKV_IMAGE")"
    # The previous build is now untagged: drop it unless a container still uses it.
    if [[ -n "$old" && "$old" != "$new" ]]; then
        docker rmi "$old" >/dev/null 2>&1 || true
    fi
    log "built $RINGKV_IMAGE ($new) in $((SECONDS - t0)) s"
}

# The ring's secrets, made once and kept in compose/.secrets/ (ignored by git): the cluster
# secret and the API tokens, mode 600 and owned by the nodes' user (65534 in the image), since
# a node refuses a secret file that group or other may read. Making them needs root (chown).
secrets_dir="$here/.secrets"
make_secrets() {
    local uid=65534
    if [[ -s "$secrets_dir/cluster.secret" && -s "$secrets_dir/tokens" ]]; then
        return 0
    fi
    ((EUID == 0)) || die "making $secrets_dir needs root (the files go to the nodes' user $uid): run up.sh with sudo once"
    mkdir -p "$secrets_dir"
    chmod 700 "$secrets_dir"
    rand() { od -An -N24 -tx1 /dev/urandom | tr -d ' \n'; }
    (umask 077
        rand >"$secrets_dir/cluster.secret"
        printf 'admin a-%s\nwrite w-%s\nread r-%s\n' "$(rand)" "$(rand)" "$(rand)" >"$secrets_dir/tokens")
    chown "$uid:$uid" "$secrets_dir/cluster.secret" "$secrets_dir/tokens"
    chmod 600 "$secrets_dir/cluster.secret" "$secrets_dir/tokens"
    log "made the ring's cluster secret and API tokens in $secrets_dir"
}

# A token of `role` from compose/.secrets/tokens.
token() { awk -v r="$1" '$1 == r { print $2; exit }' "$secrets_dir/tokens"; }

# Waits until the five containers are healthy (their healthcheck is GET /ready) and n1 reports
# five alive members.
wait_ready() {
    local t0=$1 deadline=$(($1 + up_timeout)) healthy alive ids id status
    while :; do
        healthy=0
        ids="$(compose ps -q)"
        for id in $ids; do
            status="$(docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{end}}' "$id" 2>/dev/null || true)"
            [[ "$status" == healthy ]] && healthy=$((healthy + 1))
        done
        alive="$(curl -fsS -m 2 -H "Authorization: Bearer $(token read)" \
            "http://$host_addr:$RINGKV_PORT_1/cluster/members" 2>/dev/null |
            grep -o '"status":"alive"' | wc -l || true)"
        if ((healthy == 5 && alive == 5)); then
            log "ring up: 5 healthy containers, 5 alive members, $((SECONDS - t0)) s after 'up'"
            return 0
        fi
        if ((SECONDS >= deadline)); then
            compose ps >&2 || true
            compose logs --tail 20 >&2 || true
            die "not ready after ${up_timeout} s: $healthy/5 healthy, $alive/5 alive as seen by n1"
        fi
        sleep 0.5
    done
}

cmd="${1:-up}"
case "$cmd" in
up)
    command -v curl >/dev/null || die "curl is needed to check the ring"
    t_all=$SECONDS
    if [[ "${RINGKV_SKIP_BUILD:-0}" != 1 ]]; then
        build
    fi
    docker image inspect "$RINGKV_IMAGE" >/dev/null 2>&1 ||
        die "no image $RINGKV_IMAGE: run compose/up.sh build (there is no registry to pull it from)"
    make_secrets
    log "starting the ring: project $RINGKV_PROJECT, network $RINGKV_NET.0/24, HTTP on $host_addr:$RINGKV_PORT_1..$RINGKV_PORT_5 (${compose_cmd[*]})"
    t_up=$SECONDS
    compose up -d
    wait_ready "$t_up"
    log "total $((SECONDS - t_all)) s (build included)"
    for i in 1 2 3 4 5; do
        port_var="RINGKV_PORT_$i"
        echo "  n$i  http://$host_addr:${!port_var}"
    done
    echo "  tokens (read, write, admin): $secrets_dir/tokens, e.g."
    echo "  curl -H \"Authorization: Bearer \$(awk '\$1==\"write\"{print \$2}' $secrets_dir/tokens)\" -X PUT -d hello http://$host_addr:$RINGKV_PORT_1/kv/greeting"
    ;;
down)
    shift
    # `down -v` also deletes the nodes' data volumes.
    compose down --remove-orphans --timeout 15 "$@"
    ;;
build)
    build
    ;;
roll)
    shift
    command -v curl >/dev/null || die "curl is needed to check the ring"
    if [[ "${RINGKV_SKIP_BUILD:-0}" != 1 ]]; then
        build
    fi
    nodes=("$@")
    if ((${#nodes[@]} == 0)); then
        nodes=(n1 n2 n3 n4 n5)
    fi
    t_roll=$SECONDS
    for n in "${nodes[@]}"; do
        t0=$SECONDS
        # Stops the old container (SIGTERM, then its stop grace) and starts one of the current
        # image on the same data volume; the others keep serving.
        compose up -d --no-deps --force-recreate "$n"
        deadline=$((t0 + up_timeout))
        while :; do
            id="$(compose ps -q "$n")"
            status="$(docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{end}}' "$id" 2>/dev/null || true)"
            [[ "$status" == healthy ]] && break
            ((SECONDS < deadline)) || die "$n not healthy (ready) ${up_timeout} s after its restart: compose/up.sh logs $n"
            sleep 0.5
        done
        log "$n runs $RINGKV_IMAGE and is ready, $((SECONDS - t0)) s after its restart"
    done
    wait_ready "$t_roll"
    ;;
help | -h | --help)
    sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
    ;;
*)
    compose "$@"
    ;;
esac
