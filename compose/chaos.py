#!/usr/bin/env python3
"""The container chaos test's driver: loads a five-node ringkv ring running in Docker
containers through its HTTP API, injects faults with the Docker CLI, and checks that no
acknowledged write is lost and that replicas converge.

compose/chaos.sh starts the ring, runs this script under a hard deadline, and always removes
the containers and the network; run that, not this. Steps (each fails loudly, exit 1):

  1. write KEYS keys at w=2 (all must be acknowledged: 204), wait for replicas to converge;
  2. SIGKILL two nodes (`docker kill`): once the survivors see them dead, every key is read
     at r=1 through the survivors (200, the right value), and new writes and overwrites at
     w=2 through the survivors all succeed (sloppy quorum: hints stand in for the dead);
  3. restart them (`docker start`, on their data volumes; they catch up on what they
     missed): every key's home replicas converge to identical versions (GET
     /admin/local/{key} on each home), within a deadline;
  3b. kill a whole zone (n1 and n4 are zone a, n2 and n5 zone b; `docker kill` of both):
     every key has one home per zone, so every key reads at r=2 through the survivors and
     new writes at w=2&pw=2 (two home acknowledgements) all succeed; start the zone again
     and converge;
  4. cut one node off the network (`docker network disconnect`) while writers keep writing
     through all five nodes, tracking every write's outcome; reconnect it at the
     address it had, wait for convergence, then every acknowledged write (204) must be readable:
     a key's read must contain its last acknowledged value, or a value written after it
     whose outcome was unknown (503, broken connection). Two writers write blind (no
     context), two send the context of the key's last acknowledged write. Lost acknowledged
     writes must be 0;
  5. SIGKILL all five at once and start them again on their data volumes (--data-dir, fsync
     always): once every /ready answers 200, every acknowledged write is read back at r=2.

Only the published host ports on 127.0.0.1 are contacted. Configuration comes from the
environment (chaos.sh sets it): CHAOS_PORTS ("n1=18001,n2=..."), CHAOS_CONTAINERS
("n1=<id>,..."), CHAOS_NETWORK, CHAOS_KEYS (10000),
CHAOS_SEED, CHAOS_THREADS (8), CHAOS_ISOLATION_SECS (15).
"""

import base64
import concurrent.futures
import http.client
import json
import os
import random
import select
import subprocess
import sys
import threading
import time
import urllib.parse

T0 = time.monotonic()


def log(msg):
    print(f"[chaos {time.monotonic() - T0:7.1f}s] {msg}", flush=True)


class Failed(Exception):
    """A check failed: the test exits non-zero."""


def env_map(name):
    out = {}
    for item in os.environ[name].split(","):
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


PORTS = {k: int(v) for k, v in env_map("CHAOS_PORTS").items()}
CONTAINERS = env_map("CHAOS_CONTAINERS")
NETWORK = os.environ["CHAOS_NETWORK"]
KEYS = int(os.environ.get("CHAOS_KEYS", "10000"))
SEED = int(os.environ.get("CHAOS_SEED", str(random.randrange(1 << 30))))
THREADS = int(os.environ.get("CHAOS_THREADS", "8"))
ISOLATION_SECS = float(os.environ.get("CHAOS_ISOLATION_SECS", "15"))
NODES = sorted(PORTS)
# Each node's zone, as docker-compose.yml sets RINGKV_ZONE.
ZONES = {"n1": "a", "n2": "b", "n3": "c", "n4": "a", "n5": "b"}

rng = random.Random(SEED)
figures = {}


# ---------------------------------------------------------------------------------------
# HTTP: one keep-alive connection per thread and node.

_local = threading.local()


class NotSent(Exception):
    """The request never reached the node (connection refused): it was not applied."""


class Unknown(Exception):
    """The request may have reached the node, but no answer came back."""


def _conn(node, timeout):
    conns = getattr(_local, "conns", None)
    if conns is None:
        conns = _local.conns = {}
    c = conns.get(node)
    if c is not None and (c.sock is None or select.select([c.sock], [], [], 0)[0]):
        # The node closed this idle keep-alive connection (hyper drops connections that
        # send no request for 30 s): a request on it would fail after being written.
        c.close()
        c = None
    if c is None:
        c = http.client.HTTPConnection("127.0.0.1", PORTS[node], timeout=timeout)
        try:
            c.connect()
        except OSError as err:
            c.close()
            raise NotSent(f"{node}: {err}") from err
        conns[node] = c
    c.timeout = timeout
    if c.sock is not None:
        c.sock.settimeout(timeout)
    return c


def _drop(node):
    c = getattr(_local, "conns", {}).pop(node, None)
    if c is not None:
        c.close()


def _admin_token():
    """The ring's admin token: $RINGKV_TOKEN, or compose/.secrets/tokens (up.sh makes it)."""
    if os.environ.get("RINGKV_TOKEN"):
        return os.environ["RINGKV_TOKEN"]
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), ".secrets", "tokens")
    try:
        with open(path) as f:
            for line in f:
                role, _, token = line.strip().partition(" ")
                if role == "admin":
                    return token.strip()
    except OSError:
        pass
    return None


ADMIN_TOKEN = _admin_token()


def request(node, method, path, body=None, timeout=10.0, headers=None):
    """Returns (status, headers, body). Raises NotSent or Unknown on a network failure."""
    c = _conn(node, timeout)
    headers = dict(headers or {})
    if ADMIN_TOKEN:
        headers["Authorization"] = f"Bearer {ADMIN_TOKEN}"
    try:
        c.request(method, path, body=body, headers=headers)
        resp = c.getresponse()
        data = resp.read()
    except (OSError, http.client.HTTPException) as err:
        _drop(node)
        raise Unknown(f"{node} {method} {path}: {err!r}") from err
    if resp.getheader("connection", "").lower() == "close":
        _drop(node)
    return resp.status, resp.headers, data


def kv_path(key, **params):
    q = urllib.parse.urlencode(params)
    return "/kv/" + urllib.parse.quote(key, safe="") + ("?" + q if q else "")


def read_values(node, key, r):
    """The live values a read returns: [] for 404, one for 200, every sibling for 300."""
    status, _, body = request(node, "GET", kv_path(key, r=r))
    if status == 200:
        return [body]
    if status == 300:
        return [base64.b64decode(s) for s in json.loads(body)["siblings"]]
    if status == 404:
        return []
    raise Failed(f"GET {key} r={r} via {node}: {status} {body[:200]!r}")


def members(node):
    status, _, body = request(node, "GET", "/cluster/members", timeout=5)
    if status != 200:
        raise Failed(f"/cluster/members on {node}: {status}")
    return {m["id"]: m for m in json.loads(body)["members"]}


def parallel(fn, items, threads=THREADS):
    """fn over items on a thread pool; returns the results in order."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(fn, items, chunksize=64))


# ---------------------------------------------------------------------------------------
# Docker.


def docker(*args):
    log("$ docker " + " ".join(args))
    res = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=60)
    if res.returncode != 0:
        raise Failed(f"docker {' '.join(args)}: exit {res.returncode}: {res.stderr.strip()}")
    return res.stdout.strip()


def container_ip(node):
    """The address docker gave `node` on the ring's network."""
    fmt = "{{(index .NetworkSettings.Networks \"%s\").IPAddress}}" % NETWORK
    ip = docker("inspect", "-f", fmt, CONTAINERS[node])
    if not ip:
        raise Failed(f"{node} has no address on {NETWORK}")
    return ip


# ---------------------------------------------------------------------------------------
# The model of what was written: per key, its writes in order, each acked or unknown.


class History:
    def __init__(self):
        self.lock = threading.Lock()
        # key -> list of (value, outcome) with outcome "acked" or "unknown", in write order.
        self.writes = {}
        # key -> what each write went through, for the report of a lost write.
        self.details = {}

    def record(self, key, value, outcome, detail=""):
        with self.lock:
            self.writes.setdefault(key, []).append((value, outcome))
            self.details.setdefault(key, []).append(
                f"t={time.monotonic() - T0:.2f}s {value.decode(errors='replace')} {outcome} {detail}")

    def acked_keys(self):
        return [k for k, ws in self.writes.items() if any(o == "acked" for _, o in ws)]

    def acceptable(self, key):
        """The last acked value and every value written after it: one of them must be read."""
        ws = self.writes[key]
        last = max(i for i, (_, o) in enumerate(ws) if o == "acked")
        return {v for v, _ in ws[last:]}, {v for v, o in ws[:last] if o == "acked"}

    def failed_earlier(self, key, got):
        """Whether every value read is a write whose outcome was unknown (503, no answer)
        and that was sent before the key's last acknowledged write."""
        ws = self.writes[key]
        last = max(i for i, (_, o) in enumerate(ws) if o == "acked")
        early_unknown = {v for v, o in ws[:last] if o == "unknown"}
        return bool(got) and set(got) <= early_unknown

    def count(self, outcome):
        return sum(o == outcome for ws in self.writes.values() for _, o in ws)


history = History()
replicas_of = {}  # key -> [node ids], the key's N home replicas
last_ctx = {}  # key -> the context of its last acknowledged write


def put(node, key, value, w=2, ctx=None, pw=None):
    """One write, with the context `ctx` if given, else blind (no context); returns 'acked',
    'unknown' or 'not-sent', and records it in the history."""
    t = time.monotonic() - T0
    headers = {"x-ringkv-context": ctx} if ctx else {}
    quorum = {"w": w} if pw is None else {"w": w, "pw": pw}
    try:
        status, headers, body = request(node, "PUT", kv_path(key, **quorum), body=value,
                                        headers=headers)
    except NotSent:
        return "not-sent"
    except Unknown as err:
        history.record(key, value, "unknown", f"via {node} sent at {t:.2f}s: {err}")
        return "unknown"
    detail = f"via {node} sent at {t:.2f}s: {status} context={headers.get('x-ringkv-context')} {body[:120]!r}"
    if status == 204:
        history.record(key, value, "acked", detail)
        last_ctx[key] = headers.get("x-ringkv-context")
        return "acked"
    if status == 503:
        # Quorum not met: the write may still have been applied on some replicas.
        history.record(key, value, "unknown", detail)
        return "unknown"
    raise Failed(f"PUT {key} via {node}: unexpected {status} {body[:200]!r}")


def write_all(keys, nodes, tag, pw=None):
    """Writes each key once through the nodes (round robin); every write must be acked."""

    def one(i_key):
        i, key = i_key
        value = f"{key}|{tag}".encode()
        return key, put(nodes[i % len(nodes)], key, value, pw=pw)

    t = time.monotonic()
    results = parallel(one, list(enumerate(keys)))
    bad = [(k, o) for k, o in results if o != "acked"]
    took = time.monotonic() - t
    quorum = "w=2" if pw is None else f"w=2&pw={pw}"
    log(f"{tag}: {len(keys)} writes at {quorum} through {','.join(nodes)} in {took:.1f} s "
        f"({len(keys) / took:.0f}/s), {len(bad)} not acknowledged")
    if bad:
        raise Failed(f"{tag}: {len(bad)} writes at {quorum} failed, e.g. {bad[:5]}")


def fetch_replicas(keys, via):
    def one(key):
        status, _, body = request(via, "GET", "/cluster/replicas/" + urllib.parse.quote(key, safe=""))
        if status != 200:
            raise Failed(f"/cluster/replicas/{key}: {status}")
        return key, json.loads(body)["replicas"]

    for key, reps in parallel(one, [k for k in keys if k not in replicas_of]):
        ids = [r["id"] for r in reps]
        zones = {r["id"]: r["zone"] for r in reps}
        if len(ids) != 3 or not set(ids) <= set(NODES):
            raise Failed(f"{key}: unexpected replicas {reps}")
        # One home per zone: the ring places by zone (every node supports it).
        if sorted(zones.values()) != ["a", "b", "c"] or any(ZONES[i] != z for i, z in zones.items()):
            raise Failed(f"{key}: replicas {reps} are not one per zone {ZONES}")
        replicas_of[key] = ids


def local_state(node, key):
    """What a node stores for a key, as a comparable string; None if nothing."""
    status, _, body = request(node, "GET", "/admin/local/" + urllib.parse.quote(key, safe=""))
    if status == 404:
        return None
    if status != 200:
        raise Failed(f"/admin/local/{key} on {node}: {status}")
    versions = json.loads(body)["versions"]
    return json.dumps(sorted(json.dumps(v, sort_keys=True) for v in versions))


def diverged(keys):
    """The keys whose home replicas do not all hold the same versions. A key none of whose
    writes was acknowledged may be stored nowhere (a 503 before any replica took it)."""

    def one(key):
        states = set()
        for node in replicas_of[key]:
            try:
                states.add(local_state(node, key))
            except (NotSent, Unknown):
                return key
        if len(states) != 1:
            return key
        if states == {None} and any(o == "acked" for _, o in history.writes.get(key, [])):
            return key
        return None

    return [k for k in parallel(one, keys) if k is not None]


def wait_converged(keys, since, label, focus=(), deadline_secs=180):
    """Polls until every key's home replicas agree; returns the seconds from `since`.

    A full sweep reads 3 replicas of every key, which takes seconds, so the time it gives is
    an upper bound. First, a sample of up to 200 of the keys homed on the `focus` nodes (the
    faulted ones) is polled every quarter second: the time it takes to converge is the
    sharper figure, reported too."""
    if focus:
        sample = [k for k in keys if set(replicas_of[k]) & set(focus)]
        sample = random.Random(SEED).sample(sample, min(200, len(sample)))
        while diverged(sample):
            if time.monotonic() - since > deadline_secs:
                break  # the full sweep below reports the failure
            time.sleep(0.25)
        took = time.monotonic() - since
        figures[f"{label}: sample of {len(sample)} keys on {','.join(focus)} converged (s)"] = round(took, 1)
        log(f"{label}: a sample of {len(sample)} keys homed on {','.join(focus)} converged "
            f"{took:.1f} s after the fault ended")
    pending = list(keys)
    rounds = 0
    while True:
        rounds += 1
        pending = diverged(pending)
        now = time.monotonic()
        if not pending:
            took = now - since
            log(f"{label}: all {len(keys)} keys identical on their 3 home replicas, "
                f"checked {took:.1f} s after the fault ended ({rounds} sweeps)")
            figures[f"{label}: all {len(keys)} keys verified converged by (s)"] = round(took, 1)
            return took
        log(f"{label}: {len(pending)} of {len(keys)} keys still differ between replicas")
        if now - since > deadline_secs:
            sample = pending[:3]
            detail = {k: {n: local_state(n, k) for n in replicas_of[k]} for k in sample}
            raise Failed(f"{label}: {len(pending)} keys did not converge within "
                         f"{deadline_secs} s, e.g. {json.dumps(detail)[:1500]}")
        time.sleep(1)


def node_counters():
    """The counters of /admin/stats, summed over the five nodes."""
    total = {}
    for n in NODES:
        status, _, body = request(n, "GET", "/admin/stats", timeout=5)
        if status != 200:
            raise Failed(f"/admin/stats on {n}: {status}")
        stats = json.loads(body)
        for k, v in stats["counters"].items():
            total[k] = total.get(k, 0) + v
        total["hints_pending"] = total.get("hints_pending", 0) + stats["hints_pending"]
    return total


def wait_status(observers, targets, want, deadline_secs=60):
    """Polls until every observer sees every target with status `want`; returns the time.

    A node just (re)started answers 503 to everything but /health and /ready while it loads
    its data dir: that is "not yet", like a node that does not answer at all."""
    t = time.monotonic()
    while True:
        seen = {}
        try:
            for o in observers:
                m = members(o)
                for n in targets:
                    seen[(o, n)] = m.get(n, {}).get("status")
        except (NotSent, Unknown, Failed) as err:
            seen["error"] = str(err)
        if all(seen.get((o, n)) == want for o in observers for n in targets):
            return time.monotonic() - t
        if time.monotonic() - t > deadline_secs:
            raise Failed(f"{targets} not {want} for {observers} within {deadline_secs} s: {seen}")
        time.sleep(0.2)


def check_acked(keys, via_nodes, r, label, tolerate=lambda key: False):
    """Every acknowledged write must be readable: fails unless `tolerate` says every lost
    one may be. Returns (lost keys, number of reads that showed an older acked value)."""

    def one(i_key):
        i, key = i_key
        node = via_nodes[i % len(via_nodes)]
        got = set(read_values(node, key, r))
        ok, older = history.acceptable(key)
        return key, bool(got & ok), bool(got & older), got, ok

    lost, stale = [], []
    for key, found, old, got, ok in parallel(one, list(enumerate(keys))):
        if not found:
            lost.append((key, sorted(got), sorted(ok)))
        if old:
            stale.append((key, sorted(got), sorted(ok)))
    for key, got, ok in stale[:3]:
        log(f"an older acknowledged value is still a sibling of {key}: read {got}, "
            f"home replicas {replicas_of.get(key)}")
        for line in history.details.get(key, []):
            log(f"    write {line}")
    stale = len(stale)
    log(f"{label}: {len(keys)} keys read at r={r} through {','.join(via_nodes)}: "
        f"{len(lost)} acknowledged writes lost, {stale} reads also showed an older "
        f"acknowledged value as a sibling")
    for key, got, ok in lost[:10]:
        late = " (it holds a write that failed before the lost one was made)" \
            if history.failed_earlier(key, got) else ""
        log(f"LOST {key}: read {got}, expected one of {ok}; home replicas "
            f"{replicas_of.get(key)}{late}")
        for line in history.details.get(key, []):
            log(f"    write {line}")
        for n in replicas_of.get(key, []):
            try:
                log(f"    {n} stores {local_state(n, key)}")
            except (NotSent, Unknown, Failed) as err:
                log(f"    {n}: {err}")
    if not all(tolerate(key) for key, _, _ in lost):
        raise Failed(f"{label}: {len(lost)} acknowledged writes lost, e.g. {lost[:3]}")
    return [key for key, _, _ in lost], stale


# ---------------------------------------------------------------------------------------
# The steps.


def step_write():
    log(f"step 1: write {KEYS} keys at w=2 (seed {SEED})")
    m = members(NODES[0])
    for n in NODES:
        # Each node advertises its service name, resolved to the address docker gave it.
        want = f"{container_ip(n)}:8001"
        if m.get(n, {}).get("status") != "alive" or m[n]["http"] != want:
            raise Failed(f"n1 sees {n} as {m.get(n)}, expected alive at {want} (n{n[1:]}:8001)")
    keys = [f"chaos/{i:05d}" for i in range(KEYS)]
    write_all(keys, NODES, "initial")
    fetch_replicas(keys, NODES[0])
    figures["keys written (initial, w=2)"] = len(keys)
    wait_converged(keys, time.monotonic(), "initial load")
    return keys


def step_kill(keys):
    victims = sorted(rng.sample(NODES, 2))
    survivors = [n for n in NODES if n not in victims]
    log(f"step 2: docker kill {victims} (SIGKILL); survivors {survivors}")
    t_kill = time.monotonic()
    for v in victims:
        docker("kill", CONTAINERS[v])
    detect = wait_status(survivors, victims, "dead")
    figures["failure detection after SIGKILL (s)"] = round(detect, 1)
    log(f"every survivor sees {victims} dead {detect:.1f} s after the kill")

    t = time.monotonic()
    check_acked(keys, survivors, 1, "two nodes down")
    figures["reads at r=1 with two nodes down"] = f"{len(keys)} ok in {time.monotonic() - t:.1f} s"

    fresh = [f"chaos/down/{i:05d}" for i in range(KEYS // 10)]
    overwrite = rng.sample(keys, KEYS // 10)
    write_all(fresh, survivors, "new keys, two down")
    write_all(overwrite, survivors, "overwrites, two down")
    fetch_replicas(fresh, survivors[0])
    figures["writes at w=2 with two nodes down"] = len(fresh) + len(overwrite)
    check_acked(fresh + overwrite, survivors, 1, "writes made with two nodes down")

    log(f"step 3: docker start {victims} (on their data volumes; they catch up on the rest)")
    for v in victims:
        docker("start", CONTAINERS[v])
    t_start = time.monotonic()
    back = wait_status(NODES, NODES, "alive", deadline_secs=90)
    log(f"all five see all five alive {back:.1f} s after docker start")
    all_keys = keys + fresh
    wait_converged(all_keys, t_start, "after restart", focus=victims)
    figures["two nodes down for (s)"] = round(t_start - t_kill, 1)
    check_acked(all_keys, NODES, 2, "after restart")
    return all_keys, victims


def step_zone(keys):
    """A whole zone down: every key keeps two of its three homes (one per zone), so reads at
    r=2 and writes that need two home acknowledgements (pw=2) all succeed."""
    zone = rng.choice(["a", "b"])
    down = [n for n in NODES if ZONES[n] == zone]
    up = [n for n in NODES if n not in down]
    log(f"step 3b: zone {zone} down: docker kill {down}; survivors {up}")
    t_kill = time.monotonic()
    for n in down:
        docker("kill", CONTAINERS[n])
    wait_status(up, down, "dead")
    t = time.monotonic()
    check_acked(keys, up, 2, f"zone {zone} down")
    figures[f"reads at r=2 with zone {zone} ({', '.join(down)}) down"] = (
        f"{len(keys)} ok in {time.monotonic() - t:.1f} s")
    fresh = [f"chaos/zone/{i:05d}" for i in range(KEYS // 10)]
    write_all(fresh, up, f"new keys, zone {zone} down", pw=2)
    fetch_replicas(fresh, up[0])
    figures[f"writes at w=2&pw=2 with zone {zone} down"] = f"{len(fresh)} of {len(fresh)} acknowledged"
    log(f"step 3b: docker start {down}")
    for n in down:
        docker("start", CONTAINERS[n])
    t_start = time.monotonic()
    wait_status(NODES, NODES, "alive", deadline_secs=90)
    all_keys = keys + fresh
    wait_converged(all_keys, t_start, f"after zone {zone} is back", focus=down)
    figures[f"zone {zone} down for (s)"] = round(t_start - t_kill, 1)
    check_acked(all_keys, NODES, 2, f"after zone {zone} is back")
    return all_keys


def step_isolate(keys):
    victim = rng.choice(NODES)
    others = [n for n in NODES if n != victim]
    log(f"step 4: isolate {victim} (docker network disconnect) for {ISOLATION_SECS:.0f} s "
        f"while writers keep writing through all five nodes")
    stop = threading.Event()
    counts = {"acked": 0, "unknown": 0, "not-sent": 0}
    counts_lock = threading.Lock()
    new_keys = []
    writers = 4
    mode = {}  # key -> "blind" or "context": how its writer writes it

    def writer(w):
        # Each writer owns its keys, so every key's writes are sequential and ordered. Even
        # writers write blind (no context: "supersede whatever the coordinator holds"); odd
        # ones send the context of the key's last acknowledged write, as a careful client
        # does (and the same context again after a 503, as the README asks).
        blind = w % 2 == 0
        mine = [k for i, k in enumerate(keys) if i % writers == w]
        for k in mine:
            mode[k] = "blind" if blind else "context"
        wr = random.Random(SEED * 31 + w)
        n = 0
        while not stop.is_set():
            n += 1
            if wr.random() < 0.3:
                key = f"chaos/iso/{w}/{n:06d}"
                mode[key] = "blind" if blind else "context"
                with counts_lock:
                    new_keys.append(key)
            else:
                key = wr.choice(mine)
            value = f"{key}|iso|{w}|{n}".encode()
            node = NODES[n % len(NODES)]
            outcome = put(node, key, value, ctx=None if blind else last_ctx.get(key))
            with counts_lock:
                counts[outcome] += 1
            if outcome == "not-sent":
                time.sleep(0.01)

    threads = [threading.Thread(target=writer, args=(w,), daemon=True) for w in range(writers)]
    for th in threads:
        th.start()
    try:
        time.sleep(3)
        t_cut = time.monotonic()
        # Reconnected below at the address it had: the node keeps advertising the address its
        # name resolved to when it started, as a node cut off by a network fault would.
        victim_ip = container_ip(victim)
        docker("network", "disconnect", NETWORK, CONTAINERS[victim])
        detect = wait_status(others, [victim], "dead")
        log(f"the others see {victim} dead {detect:.1f} s after the cut")
        time.sleep(max(0.0, ISOLATION_SECS - (time.monotonic() - t_cut)))
        docker("network", "connect", "--ip", victim_ip, NETWORK, CONTAINERS[victim])
        t_heal = time.monotonic()
        figures["isolation (s)"] = round(t_heal - t_cut, 1)
        back = wait_status(NODES, [victim] + others, "alive", deadline_secs=60)
        log(f"{victim} back: all five see all five alive {back:.1f} s after reconnecting")
        time.sleep(3)
    finally:
        stop.set()
        for th in threads:
            th.join(timeout=30)
    log(f"writers stopped: {counts['acked']} acknowledged, {counts['unknown']} unknown "
        f"(503 or no answer), {counts['not-sent']} refused (not sent)")
    if counts["acked"] < 1000:
        raise Failed(f"only {counts['acked']} writes were acknowledged during the isolation step")
    figures["writes in the isolation step (3 s before the cut, during it, 3 s after): acknowledged / unknown / refused"] = (
        f"{counts['acked']} / {counts['unknown']} / {counts['not-sent']}")

    fetch_replicas(new_keys, others[0])
    all_keys = keys + [k for k in new_keys if k in history.writes]
    wait_converged(all_keys, t_heal, "after isolation", focus=[victim])
    acked = history.acked_keys()

    lost, stale = check_acked(acked, NODES, 2, "after isolation")
    lost_blind = [k for k in lost if mode.get(k) == "blind"]
    figures["acknowledged writes checked at the end"] = len(acked)
    figures["acknowledged writes lost"] = (
        f"{len(lost)} ({len(lost) - len(lost_blind)} of context writes, "
        f"{len(lost_blind)} of blind writes)")
    figures["reads showing an older acknowledged value as a sibling"] = stale
    return victim


def wait_ready(nodes, deadline_secs=120):
    """Polls GET /ready on every node until each answers 200; returns the time."""
    t = time.monotonic()
    while True:
        pending = []
        for n in nodes:
            try:
                status, _, _ = request(n, "GET", "/ready", timeout=5)
            except (NotSent, Unknown):
                status = None
            if status != 200:
                pending.append(n)
        if not pending:
            return time.monotonic() - t
        if time.monotonic() - t > deadline_secs:
            raise Failed(f"{pending} not ready within {deadline_secs} s")
        time.sleep(0.2)


def step_full_restart(isolated):
    """Every node keeps its data in a volume (--data-dir, fsync always): a SIGKILL of the
    whole ring at once loses no acknowledged write."""
    acked = history.acked_keys()
    log(f"step 5: docker kill all five at once (SIGKILL), start them again on their volumes, "
        f"and read back {len(acked)} acknowledged writes")
    docker("kill", *[CONTAINERS[n] for n in NODES])
    # The node step 4 reconnected asks for the address it had (`--ip`), and docker gives the
    # others whatever address is free when each starts: the node with a fixed address goes
    # first, so another cannot take it. (`docker start` starts the containers one by one.)
    order = [isolated] + [n for n in NODES if n != isolated]
    docker("start", *[CONTAINERS[n] for n in order])
    back = wait_ready(NODES)
    log(f"all five ready {back:.1f} s after docker start")
    figures["full-ring SIGKILL: docker start to all five ready (s)"] = round(back, 1)
    t = time.monotonic()
    check_acked(acked, NODES, 2, "after a full-ring SIGKILL and restart")
    figures["acknowledged writes read back after the full-ring restart"] = (
        f"{len(acked)} of {len(acked)} in {time.monotonic() - t:.1f} s (r=2)")


def main():
    log(f"ring: {', '.join(f'{n}=127.0.0.1:{PORTS[n]}' for n in NODES)}; network {NETWORK}; "
        f"seed {SEED}")
    try:
        keys = step_write()
        all_keys, killed = step_kill(keys)
        all_keys = step_zone(all_keys)
        isolated = step_isolate(all_keys)
        step_full_restart(isolated)
    except Failed as err:
        log(f"FAILED: {err}")
        return 1
    figures["faults injected"] = (f"2 SIGKILLs ({', '.join(killed)}) + restarts, "
                                  f"a whole zone killed + restarted, "
                                  f"1 network isolation ({isolated}), "
                                  f"a SIGKILL of all five + restart")
    figures["keys written in all"] = len(history.writes)
    figures["writes in all: acknowledged / unknown"] = (
        f"{history.count('acked')} / {history.count('unknown')}")
    c = node_counters()
    figures["ring counters (sum of /admin/stats)"] = ", ".join(
        f"{k}={c.get(k, 0)}" for k in ("hints_stored", "hints_delivered", "hints_dropped",
                                       "hints_pending", "ae_keys_repaired", "read_repairs",
                                       "quorum_failures"))
    figures["chaos test took (s)"] = round(time.monotonic() - T0, 1)
    print("\n== chaos test figures", flush=True)
    for k, v in figures.items():
        print(f"  {k}: {v}")
    print("== chaos test passed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
