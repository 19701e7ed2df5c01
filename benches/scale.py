#!/usr/bin/env python3
"""A ring of N `ringkv serve --threads 1` processes on loopback, measured (README, "Scaling").

    cargo build --release && python3 benches/scale.py 64 --idle 300

Prints: the time until every node lists N alive members; false deaths seen while idle (a few
nodes' member lists polled every second); CPU, RSS and gossip traffic per node while idle;
the anti-entropy exchange times of the first node; ring balance; Merkle rebuild times from the
logs; the quorum throughput of `ringkv bench` through five nodes, with and without key-aware
routing; the time until a SIGKILLed node is seen dead by all others. Ports BASE..BASE+2999 on
127.0.0.1 must be free (`--base`, 20000 by default). Logs go to a fresh temporary directory.
A measurement, not a test: it asserts nothing.
"""
import argparse, json, os, re, signal, subprocess, tempfile, time, urllib.request, statistics

ap = argparse.ArgumentParser()
ap.add_argument("n", type=int)
ap.add_argument("--vnodes", type=int, default=256)
ap.add_argument("--idle", type=int, default=60)
ap.add_argument("--bin", default=os.path.join(os.path.dirname(__file__), "..", "target", "release", "ringkv"))
ap.add_argument("--base", type=int, default=20000)
ap.add_argument("--bench", type=int, default=10, help="seconds of each ringkv bench run")
ap.add_argument("--extra", default="", help="more serve flags, space-separated")
a = ap.parse_args()
N, B = a.n, a.base

def get(port, path, timeout=5):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
        return r.read()

def members(i):
    try:
        return json.loads(get(B + i, "/cluster/members"))["members"]
    except Exception:
        return None

def metric(text, name):
    for line in text.splitlines():
        if line.split(" ")[0] == name:
            return float(line.rsplit(" ", 1)[1])
    return 0.0

def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return int(parts[11]) + int(parts[12])

def anon_kb(pid):
    """Anonymous memory (the malloc heap, arenas and thread stacks), from smaps_rollup."""
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Anonymous:"):
                return int(line.split()[1])
    return 0

def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0

seeds = ",".join(f"127.0.0.1:{B + 2000 + i}" for i in range(min(3, N)))
procs = []
logdir = tempfile.mkdtemp(prefix=f"ringkv-scale-{N}-")
print(f"logs in {logdir}")
for i in range(N):
    cmd = [a.bin, "serve", "--id", f"s{i:03}", "--http", f"127.0.0.1:{B + i}",
           "--rpc", f"127.0.0.1:{B + 1000 + i}", "--gossip", f"127.0.0.1:{B + 2000 + i}",
           "--seeds", seeds, "--threads", "1", "--vnodes", str(a.vnodes), "--cluster-id", f"scale{N}"] + a.extra.split()
    log = open(f"{logdir}/s{i:03}.log", "w")
    procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, env={**os.environ, "RUST_LOG": "ringkv=info"}))
started = time.time()
print(f"N={N} vnodes={a.vnodes} {a.extra}: {N} processes started")

def alive_count(i):
    m = members(i)
    if m is None:
        return -1
    return sum(1 for x in m if x["status"] == "alive")

def until_each(nodes, holds, since, limit, poll):
    """Polls each node until `holds(i)`; returns {node: seconds after `since`} and the rest."""
    pending, took = set(nodes), {}
    while pending and time.time() < since + limit:
        for i in list(pending):
            if holds(i):
                took[i] = time.time() - since
                pending.discard(i)
        time.sleep(poll)
    return took, pending

# 1. Convergence: every node lists N alive members.
conv, pending = until_each(range(N), lambda i: alive_count(i) == N, started, 300, 0.1)
if pending:
    print(f"  NOT converged after 300 s: {len(pending)} nodes short, e.g. s{min(pending):03} sees {alive_count(min(pending))}")
else:
    print(f"  converged: every node lists {N} alive after {max(conv.values()):.1f} s (median node {statistics.median(conv.values()):.1f} s) from the first start")

# 2. Idle window: false deaths, CPU, RSS, gossip traffic, anti-entropy.
def metrics_all():
    out = []
    for i in range(N):
        try:
            out.append(get(B + i, "/metrics").decode())
        except Exception:
            out.append("")
    return out
m0 = metrics_all(); c0 = [cpu_ticks(p.pid) for p in procs]; t0 = time.time()
false_deaths = 0; samples = 0
end = t0 + a.idle
while time.time() < end:
    for i in range(0, N, max(1, N // 8)):
        m = members(i)
        if m is None:
            continue
        samples += 1
        bad = [x["id"] for x in m if x["status"] != "alive"]
        if bad:
            false_deaths += 1
            print(f"  false death: s{i:03} sees {bad} at +{time.time() - t0:.1f} s")
    time.sleep(1.0)
m1 = metrics_all(); c1 = [cpu_ticks(p.pid) for p in procs]; t1 = time.time()
hz = os.sysconf("SC_CLK_TCK")
cpu = [(b - a_) / hz / (t1 - t0) * 100 for a_, b in zip(c0, c1)]
rss = [rss_kb(p.pid) / 1024 for p in procs]
heap = [anon_kb(p.pid) / 1024 for p in procs]
sent = [(metric(y, "ringkv_gossip_bytes_sent_total") - metric(x, "ringkv_gossip_bytes_sent_total")) / (t1 - t0) for x, y in zip(m0, m1)]
dgrams = [(metric(y, "ringkv_gossip_datagrams_sent_total") - metric(x, "ringkv_gossip_datagrams_sent_total")) / (t1 - t0) for x, y in zip(m0, m1)]
largest = max(metric(y, "ringkv_gossip_largest_datagram_bytes") for y in m1)
print(f"  idle {a.idle} s: false deaths {false_deaths} in {samples} member lists")
print(f"  CPU per node: median {statistics.median(cpu):.1f}% max {max(cpu):.1f}% of a core; all {sum(cpu):.0f}%")
print(f"  RSS per node: median {statistics.median(rss):.1f} MB max {max(rss):.1f} MB; "
      f"heap (anonymous memory) median {statistics.median(heap):.1f} MB max {max(heap):.1f} MB")
print(f"  gossip per node: median {statistics.median(sent)/1024:.1f} KB/s sent, {statistics.median(dgrams):.1f} datagrams/s; largest datagram {largest:.0f} B (cap 65507)")
stages = json.loads(get(B, "/admin/stages"))
ae = stages.get("anti_entropy", {})
print(f"  anti-entropy exchange (node s000, since start): count {ae.get('count')} p50 {ae.get('p50_us')} us p99 {ae.get('p99_us')} us")

# 3. Ring balance.
ring = json.loads(get(B, "/cluster/ring"))
tokens = sorted((int(t), n["id"]) for n in ring["nodes"] for t in n["tokens"])
share = {n["id"]: 0 for n in ring["nodes"]}
for k, (tok, node) in enumerate(tokens):
    prev = tokens[k - 1][0] if k > 0 else tokens[-1][0] - 2**64
    share[node] += tok - prev
vals = sorted(share.values())
print(f"  ring balance at {a.vnodes} vnodes: max/min share {vals[-1]/vals[0]:.2f}, max/mean {vals[-1]/(2**64/N):.2f}")

# Merkle rebuild times from the logs, at the full ring size.
took = []
for i in range(N):
    with open(f"{logdir}/s{i:03}.log") as f:
        for line in f:
            line = re.sub(r"\x1b\[[0-9;]*m", "", line)
            m = re.search(r"Merkle trees rebuilt.*members=(\d+).*took_ms=(\d+)", line)
            if m and int(m.group(1)) == N:
                took.append(int(m.group(2)))
if took:
    print(f"  Merkle rebuild at {N} members: {len(took)} rebuilds, median {statistics.median(took)} ms, max {max(took)} ms")

# Quorum throughput: `ringkv bench` through five of the nodes, 50 connections, 100 B values,
# half reads; once plain and once with key-aware routing (--route).
five = ",".join(f"http://127.0.0.1:{B + i}" for i in range(0, N, max(1, N // 5))[:5])
for extra in ([], ["--route"]):
    out = subprocess.run([a.bin, "bench", "--node", five, "-c", "50", "--duration", f"{a.bench}s",
                          "--keys", "10000", "--json"] + extra, capture_output=True, text=True)
    try:
        r = json.loads(out.stdout)
        lat = r["latency_us"]["all"]
        print(f"  bench{' --route' if extra else ''} through 5 nodes, c=50: {r['ops_per_sec']:.0f} ops/s, "
              f"p50 {lat.get('p50')} us p99 {lat.get('p99')} us, errors {r['errors']['total']}")
    except Exception as e:
        print(f"  bench failed ({e}): {out.stderr[-500:]}")

# 4. Kill detection.
victim = N - 1
procs[victim].send_signal(signal.SIGKILL); procs[victim].wait()
def sees_victim_dead(i):
    m = members(i)
    return bool(m) and any(x["id"] == f"s{victim:03}" and x["status"] != "alive" for x in m)

det, pending = until_each(range(N - 1), sees_victim_dead, time.time(), 120, 0.05)
if pending:
    print(f"  kill NOT detected by {len(pending)} nodes in 120 s")
else:
    print(f"  SIGKILL of s{victim:03} seen dead by all {N-1} others after {max(det.values()):.2f} s (first {min(det.values()):.2f} s, median {statistics.median(det.values()):.2f} s)")

for p in procs:
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
t = time.time()
for p in procs:
    try:
        p.wait(timeout=30)
    except subprocess.TimeoutExpired:
        p.kill()
print(f"  SIGTERM to all: exited in {time.time() - t:.1f} s")
