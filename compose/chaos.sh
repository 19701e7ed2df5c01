#!/usr/bin/env bash
# The container chaos test: a five-node ring in Docker containers, two nodes SIGKILLed and
# restarted, one node cut off the network while writes go on; no acknowledged write may be
# lost and every key's replicas must converge. compose/chaos.py drives the ring and does the
# checks (its docstring lists the steps); this script gives it a ring of its own and always
# removes it.
#
#   compose/chaos.sh
#
# - Its own compose project (ringkv-chaos-PID), its own /24 network (the first of
#   172.28.214.0 ... 172.28.254.0 that overlaps no Docker network or route) and its own host
#   ports (five free consecutive ports from 18001 up), so it can run beside a ring started
#   by compose/up.sh.
# - A hard deadline, CHAOS_DEADLINE_SECS (default 900), over everything including the build;
#   the test itself takes about two minutes.
# - On exit, whatever happened (failure, deadline, Ctrl-C), the containers and the network
#   are removed. The image (ringkv:local) is kept.
# - Exit code 0 when every check passed; non-zero otherwise, with the nodes' last logs.
#
# Environment: CHAOS_DEADLINE_SECS, CHAOS_KEYS (10000), CHAOS_SEED, CHAOS_ISOLATION_SECS (15),
# and up.sh's RINGKV_BINARY / RINGKV_SKIP_BUILD / RINGKV_IMAGE / COMPOSE.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
up="$here/up.sh"
deadline=$((SECONDS + ${CHAOS_DEADLINE_SECS:-900}))

log() { printf '[chaos.sh %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

export RINGKV_PROJECT="ringkv-chaos-$$"
# chaos.py talks to the nodes on 127.0.0.1 only.
export RINGKV_PUBLISH_ADDR=127.0.0.1
status=1

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if ((status != 0 && rc == 0)); then rc=1; fi
    if ((status != 0)); then
        local logs="${TMPDIR:-/tmp}/$RINGKV_PROJECT.log"
        timeout 60 "$up" logs --no-color >"$logs" 2>&1 || true
        log "FAILED: the nodes' last log lines (all of them: $logs):"
        timeout 60 "$up" logs --no-color --tail 15 >&2 2>&1 || true
    fi
    log "cleaning up project $RINGKV_PROJECT"
    timeout 120 "$up" down -v >/dev/null 2>&1 || true
    # Whatever compose could not remove (it timed out, or was never asked).
    local leftover
    leftover="$(docker ps -aq --filter "label=com.docker.compose.project=$RINGKV_PROJECT")"
    [[ -z "$leftover" ]] || docker rm -f $leftover >/dev/null 2>&1 || true
    leftover="$(docker network ls -q --filter "label=com.docker.compose.project=$RINGKV_PROJECT")"
    [[ -z "$leftover" ]] || docker network rm $leftover >/dev/null 2>&1 || true
    leftover="$(docker volume ls -q --filter "label=com.docker.compose.project=$RINGKV_PROJECT")"
    [[ -z "$leftover" ]] || docker volume rm $leftover >/dev/null 2>&1 || true
    if [[ -n "$(docker ps -aq --filter "label=com.docker.compose.project=$RINGKV_PROJECT")$(docker network ls -q --filter "label=com.docker.compose.project=$RINGKV_PROJECT")" ]]; then
        log "WARNING: containers or networks of $RINGKV_PROJECT are left behind"
        rc=1
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Sets $left to the seconds left before the deadline; exits once it has passed.
budget() {
    left=$((deadline - SECONDS))
    if ((left <= 0)); then
        log "FAILED: deadline of ${CHAOS_DEADLINE_SECS:-900} s reached"
        exit 124
    fi
}

# A /24 that overlaps no Docker network and no host route, and five free host ports.
read -r RINGKV_NET RINGKV_PORT_BASE < <(python3 - <<'PY'
import ipaddress, json, socket, subprocess
used = []
ids = subprocess.run(["docker", "network", "ls", "-q"], capture_output=True, text=True, check=True).stdout.split()
if ids:
    out = subprocess.run(["docker", "network", "inspect", *ids], capture_output=True, text=True, check=True).stdout
    for net in json.loads(out):
        for cfg in (net.get("IPAM") or {}).get("Config") or []:
            if cfg.get("Subnet", "").count(".") == 3:
                used.append(ipaddress.ip_network(cfg["Subnet"], strict=False))
routes = subprocess.run(["ip", "-4", "route"], capture_output=True, text=True).stdout
for line in routes.splitlines():
    dest = line.split()[0]
    if dest != "default" and dest[0].isdigit():
        used.append(ipaddress.ip_network(dest, strict=False))
net = next(f"172.28.{i}" for i in range(214, 255)
           if not any(ipaddress.ip_network(f"172.28.{i}.0/24").overlaps(u) for u in used))
def free(port):
    with socket.socket() as s:
        # As a server binds: connections of an earlier run in TIME_WAIT do not count.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False
base = next(b for b in range(18001, 30000, 10) if all(free(b + i) for i in range(5)))
print(net, base)
PY
)
export RINGKV_NET RINGKV_PORT_BASE
log "project $RINGKV_PROJECT, network $RINGKV_NET.0/24, host ports $RINGKV_PORT_BASE..$((RINGKV_PORT_BASE + 4))"

if [[ "${RINGKV_SKIP_BUILD:-0}" != 1 ]]; then
    budget
    timeout "$left" "$up" build
fi
budget
RINGKV_SKIP_BUILD=1 RINGKV_UP_TIMEOUT=120 timeout "$left" "$up" up

ports="" containers=""
for i in 1 2 3 4 5; do
    id="$("$up" ps -q "n$i")"
    [[ -n "$id" ]] || { log "no container for n$i"; exit 1; }
    ports+="n$i=$((RINGKV_PORT_BASE + i - 1)),"
    containers+="n$i=$id,"
done
network="$(docker inspect -f '{{range $k, $v := .NetworkSettings.Networks}}{{$k}}{{end}}' "$("$up" ps -q n1)")"

budget
rc=0
CHAOS_PORTS="${ports%,}" CHAOS_CONTAINERS="${containers%,}" CHAOS_NETWORK="$network" \
    timeout --kill-after=10 "$left" python3 "$here/chaos.py" || rc=$?
if ((rc == 124 || rc == 137)); then
    log "FAILED: the deadline of ${CHAOS_DEADLINE_SECS:-900} s was reached (CHAOS_DEADLINE_SECS)"
fi
((rc == 0)) || exit "$rc"
status=0
