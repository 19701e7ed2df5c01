#!/usr/bin/env bash
# Backup and restore of 1M keys of 100 B (README, "Backup and restore"), beside Redis's dump.
#
#   cargo build --release && bash benches/backup.sh
#
# Starts a five-node `ringkv dev` ring (HTTP 8001-8005), fills it with `ringkv bench --prefill`
# (1M keys of 100 B), then runs ROUNDS alternating rounds of:
#   - `ringkv backup` of the whole ring;
#   - `redis-cli --rdb` of a Redis holding 1M keys of 100 B (DEBUG POPULATE), on port 7379 as
#     ../shared/bench/peers/redis.sh runs it (no persistence), with `repl-diskless-sync-delay 0`
#     (the default, 5 s, waits for more replicas before the dump starts);
#   - `ringkv restore` of the backup into a fresh five-node `ringkv dev` ring (HTTP 18001-18005).
# Prints each time and the medians. A measurement, not a test: it asserts nothing.
# Knobs: KEYS (1000000), ROUNDS (3), BIN (target/release/ringkv).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
: "${KEYS:=1000000}" "${ROUNDS:=3}" "${BIN:=$HERE/../target/release/ringkv}"
for tool in redis-server redis-cli python3; do
  command -v "$tool" >/dev/null || { echo "needs $tool: bash ../shared/bench/peers/install.sh" >&2; exit 1; }
done
WORK=$(mktemp -d /tmp/ringkv-backup-bench.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

secs() { python3 -c "import time; print(time.monotonic())"; }
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

"$BIN" dev --base-port 8001 >"$WORK/source.log" 2>&1 &
PIDS+=($!)
"$BIN" wait --ready --node http://127.0.0.1:8001 --timeout 30 >/dev/null
NODES=()
for p in 8001 8002 8003 8004 8005; do NODES+=(--node "http://127.0.0.1:$p"); done
echo "filling the ring with $KEYS keys of 100 B..." >&2
"$BIN" bench "${NODES[@]}" --route --keys "$KEYS" --prefill --ops 1 --value-size 100 >/dev/null

redis-server --bind 127.0.0.1 --port 7379 --save '' --appendonly no --dir "$WORK" --enable-debug-command yes \
  --repl-diskless-sync-delay 0 \
  --logfile "$WORK/redis.log" --daemonize no >/dev/null 2>&1 &
PIDS+=($!)
for _ in $(seq 1 100); do redis-cli -p 7379 ping >/dev/null 2>&1 && break; sleep 0.1; done
redis-cli -p 7379 debug populate "$KEYS" key 100 >/dev/null
echo "redis holds $(redis-cli -p 7379 dbsize) keys" >&2

B=(); D=(); R=()
for round in $(seq 1 "$ROUNDS"); do
  t0=$(secs); "$BIN" backup -q "$WORK/ring.rkv" --node http://127.0.0.1:8001; t1=$(secs)
  B+=("$(python3 -c "print(round($t1 - $t0, 2))")")
  t0=$(secs); redis-cli -p 7379 --rdb "$WORK/dump.rdb" >/dev/null 2>&1; t1=$(secs)
  D+=("$(python3 -c "print(round($t1 - $t0, 2))")")
  "$BIN" dev --base-port 18001 >"$WORK/target-$round.log" 2>&1 &
  target=$!
  "$BIN" wait --ready --node http://127.0.0.1:18001 --timeout 30 >/dev/null
  t0=$(secs); "$BIN" restore -q "$WORK/ring.rkv" --node http://127.0.0.1:18001 >/dev/null; t1=$(secs)
  R+=("$(python3 -c "print(round($t1 - $t0, 2))")")
  kill "$target"; wait "$target" 2>/dev/null || true
  echo "round $round: backup ${B[-1]}s, redis-cli --rdb ${D[-1]}s, restore ${R[-1]}s" >&2
done
records=$("$BIN" restore --dry-run --json "$WORK/ring.rkv" | python3 -c "import json,sys; print(json.load(sys.stdin)['keys'])")
size=$(stat -c %s "$WORK/ring.rkv"); rdb=$(stat -c %s "$WORK/dump.rdb")
mb=$(printf '%s\n' "${B[@]}" | median); md=$(printf '%s\n' "${D[@]}" | median); mr=$(printf '%s\n' "${R[@]}" | median)
echo "== $records keys of 100 B, five-node ringkv dev, medians of $ROUNDS rounds =="
echo "ringkv backup      ${mb}s  $(python3 -c "print(int($records / $mb))") keys/s  file $size bytes"
echo "redis-cli --rdb    ${md}s  $(python3 -c "print(int($KEYS / $md))") keys/s  file $rdb bytes"
echo "ringkv restore     ${mr}s  $(python3 -c "print(int($records / $mr))") keys/s (verification included)"
