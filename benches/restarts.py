#!/usr/bin/env python3
"""Gossip cost of restart churn (README, "Scaling"): a five-node ring of `ringkv serve`
processes on loopback, one of which is killed and started again K times.

    cargo build --release && python3 benches/restarts.py 500

Prints, for the four nodes that stay up, their gossip traffic (bytes and datagrams sent per
second per node, and so the mean datagram, from `ringkv_gossip_*` in /metrics) over a quiet
window before the restarts and two after them, and the largest gossip datagram any of them
sent in the whole run. Each restart SIGKILLs the fifth node and starts it
again, then waits until the first node sees its new generation alive. Ports BASE..BASE+2999
on 127.0.0.1 must be free (`--base`, 21000 by default). A measurement, not a test: it
asserts nothing.
"""
import argparse, json, os, subprocess, tempfile, time, urllib.request

ap = argparse.ArgumentParser()
ap.add_argument("restarts", type=int)
ap.add_argument("--window", type=int, default=20, help="seconds of each quiet window")
ap.add_argument("--bin", default=os.path.join(os.path.dirname(__file__), "..", "target", "release", "ringkv"))
ap.add_argument("--base", type=int, default=21000)
a = ap.parse_args()
B, N = a.base, 5
logdir = tempfile.mkdtemp(prefix="ringkv-restarts-")
print(f"logs in {logdir}")


def get(port, path, timeout=5):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
        return r.read()


def metric(text, name):
    for line in text.splitlines():
        if line.split(" ")[0] == name:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def start(i):
    cmd = [a.bin, "serve", "--id", f"r{i}", "--http", f"127.0.0.1:{B + i}",
           "--rpc", f"127.0.0.1:{B + 1000 + i}", "--gossip", f"127.0.0.1:{B + 2000 + i}",
           "--seeds", f"127.0.0.1:{B + 2000}", "--threads", "1", "--cluster-id", "restarts"]
    log = open(os.path.join(logdir, f"r{i}.log"), "ab")
    return subprocess.Popen(cmd, stdout=log, stderr=log)


def member(i, who):
    try:
        ms = json.loads(get(B + i, "/cluster/members"))["members"]
    except Exception:
        return None
    return next((m for m in ms if m.get("id") == who), None)


def wait(cond, what, limit=60):
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > limit:
            raise SystemExit(f"not within {limit} s: {what}")
        time.sleep(0.05)
    return time.monotonic() - t0


def traffic():
    """Per steady node: (bytes sent, datagrams sent, largest datagram)."""
    out = []
    for i in range(N - 1):
        text = get(B + i, "/metrics").decode()
        out.append((metric(text, "ringkv_gossip_bytes_sent_total"),
                    metric(text, "ringkv_gossip_datagrams_sent_total"),
                    metric(text, "ringkv_gossip_largest_datagram_bytes")))
    return out


def window(label):
    before = traffic()
    time.sleep(a.window)
    after = traffic()
    bps = sorted((x[0] - y[0]) / a.window for x, y in zip(after, before))
    dps = sorted((x[1] - y[1]) / a.window for x, y in zip(after, before))
    largest = max(x[2] for x in after)
    b, d = bps[len(bps) // 2], dps[len(dps) // 2]
    print(f"{label}: per node {b / 1000:.1f} KB/s sent (median of 4), {d:.0f} datagrams/s, "
          f"{b / max(d, 1):.0f} B per datagram; largest datagram so far {largest:.0f} B", flush=True)


procs = [start(i) for i in range(N)]
try:
    wait(lambda: all(member(0, f"r{i}") and member(0, f"r{i}")["status"] == "alive" for i in range(N)),
         "the ring forms")
    window("fresh ring")
    t0 = time.monotonic()
    for k in range(a.restarts):
        old = member(0, "r4")["generation"]
        procs[4].kill()
        procs[4].wait()
        procs[4] = start(4)
        wait(lambda: (m := member(0, "r4")) is not None and m["generation"] != old
             and m["status"] == "alive", f"restart {k + 1} is seen")
        if (k + 1) % 100 == 0:
            print(f"{k + 1} restarts in {time.monotonic() - t0:.0f} s", flush=True)
    window(f"after {a.restarts} restarts")
    time.sleep(15)
    window(f"after {a.restarts} restarts and 15 s more")
finally:
    for p in procs:
        p.kill()
