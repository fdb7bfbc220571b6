#!/usr/bin/env python3
"""The clients and checks of bench/chaos.sh and bench/soak.sh (stdlib only).

Subcommands (each `--help`):
  writer        PUT/PATCH (Bearer token, keep-alive) to a set of products on
                one or more instances until a stop file appears; logs every
                write, acknowledged (2xx, with the version returned) or not,
                as one JSON line.
  reader        GET the written products (and a few uncached ids) on every
                instance until a stop file appears; logs every read (status,
                version from the ETag, X-Cache) as one CSV line.
  measure       after a heal: recovery time (every /health `ok` and every
                written product served by every instance at the store's
                version) and the divergence at heal + 1 s and heal + TTL + 1 s.
  final         every acknowledged write is in the store, and every instance
                agrees with the store on every written product (allowing the
                1 s bus bound).
  report        bench/chaos.sh's tables and verdict, from its work directory.
  soak-summary  bench/soak.sh's series summary and verdict, from its CSV.

The store is read directly with `psql` (never through the instances).
Exit status: 0, or 1 when a check fails (report, final, soak-summary).
"""

import argparse
import csv
import glob
import http.client
import json
import os
import random
import subprocess
import sys
import threading
import time
import urllib.parse

# ---------------------------------------------------------------- helpers


def parse_ids(text):
    """`1-40`, `1,2,5` or a mix (`1-3,7`) → a sorted list of ids."""
    ids = set()
    for part in filter(None, text.split(",")):
        if "-" in part:
            low, high = part.split("-", 1)
            ids.update(range(int(low), int(high) + 1))
        else:
            ids.add(int(part))
    return sorted(ids)


class Http:
    """One keep-alive HTTP/1.1 connection to one instance."""

    def __init__(self, base, timeout):
        parsed = urllib.parse.urlsplit(base)
        self.host, self.port = parsed.hostname, parsed.port or 80
        self.timeout = timeout
        self.conn = None

    def request(self, method, path, body=None, headers=None, retry=False):
        """(status, headers, body); status is `timeout` or `error` when no
        answer came. `retry`: once more on a fresh connection if a reused one
        failed (only for idempotent requests)."""
        for attempt in (0, 1):
            reused = self.conn is not None
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                self.conn.request(method, path, body=body, headers=headers or {})
                response = self.conn.getresponse()
                data = response.read()
                if response.getheader("connection", "").lower() == "close":
                    self.close()
                return response.status, response, data
            except TimeoutError:
                self.close()
                return "timeout", None, b""
            except (OSError, http.client.HTTPException) as error:
                self.close()
                if retry and reused and attempt == 0:
                    continue
                return "error", None, str(error).encode()
        return "error", None, b""

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def etag_version(response):
    etag = response.getheader("etag", "") if response is not None else ""
    try:
        return int(etag.strip('W/"').rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return None


def read_version(client, product_id):
    """(status, version) of GET /products/{id} on one instance."""
    status, response, _ = client.request("GET", f"/products/{product_id}", retry=True)
    return status, etag_version(response) if status == 200 else None


def store_rows(dsn, ids):
    """{id: row} straight from PostgreSQL."""
    query = (
        "select coalesce(json_agg(json_build_object('id', id, 'version', version, 'name', name, "
        "'description', description, 'price', price, 'category', category, 'in_stock', in_stock)), "
        f"'[]') from products where id in ({','.join(map(str, ids))})"
    )
    out = subprocess.run(
        ["psql", dsn, "-XAtq", "-c", query], capture_output=True, text=True, timeout=30, check=True
    )
    return {row["id"]: row for row in json.loads(out.stdout)}


def stopped(stop_file, deadline):
    return os.path.exists(stop_file) or time.time() >= deadline


def pause_until(at, stop_file, deadline):
    """Sleeps until `at`, waking every 0.2 s to notice the stop file."""
    while time.time() < at and not stopped(stop_file, deadline):
        time.sleep(min(0.2, max(0.0, at - time.time())))


def fmt_s(seconds):
    return "-" if seconds is None else f"{seconds:.1f}s"


# ---------------------------------------------------------------- writer


def cmd_writer(args):
    urls = args.urls.split(",")
    ids = parse_ids(args.ids)
    deadline = time.time() + args.max_seconds
    lock = threading.Lock()
    out = open(args.log, "a", encoding="utf-8")
    headers = {"Authorization": f"Bearer {args.token}", "Content-Type": "application/json"}

    def log(record):
        with lock:
            out.write(json.dumps(record) + "\n")
            out.flush()

    def worker(k):
        rng = random.Random(f"{args.tag}-{k}-{time.time()}")
        mine = ids[k :: args.threads]
        clients = {url: Http(url, args.timeout) for url in urls}
        period = args.threads / args.rate
        next_at = time.time()
        seq = 0
        while mine and not stopped(args.stop_file, deadline):
            product_id = mine[seq % len(mine)]
            url = urls[(seq + k) % len(urls)]
            seq += 1
            stamp = f"{args.tag} w{k}.{seq}"
            if rng.random() < 0.5:
                method = "PUT"
                body = {
                    "name": f"chaos {product_id} {stamp}",
                    "description": f"written by {stamp} at {time.time():.3f}",
                    "price": rng.randint(100, 999_999) / 100,
                    "category": "chaos",
                    "in_stock": rng.random() < 0.5,
                }
            else:
                method = "PATCH"
                body = rng.choice(
                    [
                        {"price": rng.randint(100, 999_999) / 100},
                        {"name": f"chaos {product_id} {stamp}", "in_stock": rng.random() < 0.5},
                        {"description": f"patched by {stamp}"},
                    ]
                )
            t0 = time.time()
            status, _, data = clients[url].request(
                method, f"/products/{product_id}", body=json.dumps(body), headers=headers
            )
            t1 = time.time()
            record = {"t0": t0, "t1": t1, "id": product_id, "url": url, "method": method,
                      "status": status, "tag": args.tag, "sent": body}
            if isinstance(status, int) and 200 <= status < 300:
                product = json.loads(data)
                record["version"] = product["version"]
                record["product"] = product
            elif status == "error":
                record["error"] = data.decode(errors="replace")[:200]
            log(record)
            next_at = max(next_at + period, time.time() - period)
            pause_until(next_at, args.stop_file, deadline)

    run_threads(worker, [(k,) for k in range(args.threads)])


def run_threads(target, jobs):
    """Runs target(*job) for every job on a thread of its own; waits for all."""
    threads = [threading.Thread(target=target, args=job) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def load_writes(pattern):
    writes = []
    for path in sorted(glob.glob(pattern)):
        with open(path, encoding="utf-8") as f:
            writes.extend(json.loads(line) for line in f if line.strip())
    return writes


def acked(write):
    return isinstance(write["status"], int) and 200 <= write["status"] < 300


# ---------------------------------------------------------------- reader


def cmd_reader(args):
    urls = args.urls.split(",")
    ids = parse_ids(args.ids)
    cold = parse_ids(args.cold) if args.cold else []
    deadline = time.time() + args.max_seconds
    lock = threading.Lock()
    out = open(args.log, "a", encoding="utf-8", newline="")
    writer = csv.writer(out)

    # One thread a instance and kind, so that uncached reads stuck on a hung
    # store do not hold up the sampling of the written set.
    def worker(instance, url, kind, rate):
        client = Http(url, args.timeout)
        rng = random.Random()
        period = 1 / rate
        next_at = time.time()
        n = 0
        rows = []
        while not stopped(args.stop_file, deadline):
            n += 1
            product_id = rng.choice(cold) if kind == "cold" else ids[n % len(ids)]
            t0 = time.time()
            status, response, _ = client.request("GET", f"/products/{product_id}", retry=True)
            t1 = time.time()
            version = etag_version(response) if status == 200 else ""
            x_cache = response.getheader("x-cache", "") if response is not None else ""
            retry_after = response.getheader("retry-after", "") if response is not None else ""
            rows.append((f"{t0:.4f}", f"{t1:.4f}", instance, product_id, kind, status, version,
                         x_cache, retry_after))
            if len(rows) >= 100:
                with lock:
                    writer.writerows(rows)
                    out.flush()
                rows = []
            next_at = max(next_at + period, time.time() - period)
            pause_until(next_at, args.stop_file, deadline)
        with lock:
            writer.writerows(rows)
            out.flush()

    jobs = [(i, url, "written", args.rate) for i, url in enumerate(urls)]
    if cold and args.cold_rate > 0:
        jobs += [(i, url, "cold", args.cold_rate) for i, url in enumerate(urls)]
    run_threads(worker, jobs)


def load_reads(path):
    reads = []
    if not os.path.exists(path):
        return reads
    with open(path, encoding="utf-8", newline="") as f:
        for row in csv.reader(f):
            t0, t1, instance, product_id, kind, status, version, x_cache, retry_after = row
            reads.append({
                "t0": float(t0), "t1": float(t1), "instance": int(instance), "id": int(product_id),
                "kind": kind, "status": int(status) if status.isdigit() else status,
                "version": int(version) if version else None, "x_cache": x_cache,
                "retry_after": retry_after,
            })
    return reads


# ---------------------------------------------------------------- divergence


def snapshot(clients, dsn, ids):
    """{id: {"store": v, "instances": [v or status...]}} for every written
    product some instance answers with another version than the store's.
    The store is read before and after the instances; if it moved meanwhile
    (a write still finishing), the snapshot is taken again."""
    for _ in range(5):
        before = {i: row["version"] for i, row in store_rows(dsn, ids).items()}
        seen = [{i: read_version(client, i) for i in ids} for client in clients]
        after = {i: row["version"] for i, row in store_rows(dsn, ids).items()}
        if before == after:
            break
        time.sleep(0.05)
    diverged = {}
    for i in ids:
        answers = [s[i][1] if s[i][0] == 200 else f"HTTP {s[i][0]}" for s in seen]
        if any(answer != after.get(i) for answer in answers):
            diverged[i] = {"store": after.get(i), "instances": answers}
    return diverged


def health_ok(client):
    status, _, body = client.request("GET", "/health", retry=True)
    if status != 200:
        return False
    try:
        return json.loads(body).get("status") == "ok"
    except ValueError:
        return False


def cmd_measure(args):
    ids = parse_ids(args.ids)
    clients = [Http(url, args.timeout) for url in args.urls.split(",")]
    heal = args.heal
    marks = {"div1": heal + 1, "div2": heal + args.ttl + 1}
    result = {"heal": heal, "recovered_at": None, "recovery_s": None, "health_s": None, "versions_s": None}
    while True:
        now = time.time()
        for name, at in marks.items():
            if name not in result and now >= at:
                taken = time.time()
                diverged = snapshot(clients, args.dsn, ids)
                result[name] = {"offset": taken - heal, "count": len(diverged), "products": diverged}
        if result["recovered_at"] is None and now < heal + args.recovery_timeout:
            started = time.time()
            healthy = all([health_ok(c) for c in clients])
            agree = not snapshot(clients, args.dsn, ids)
            since = max(0.0, started - heal)
            if healthy and result["health_s"] is None:
                result["health_s"] = since
            if agree and result["versions_s"] is None:
                result["versions_s"] = since
            if healthy and agree:
                result["recovered_at"] = started
                result["recovery_s"] = since
        done_marks = all(name in result for name in marks)
        if done_marks and (result["recovered_at"] is not None or now >= heal + args.recovery_timeout):
            break
        time.sleep(0.1)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(result, f)


# ---------------------------------------------------------------- final checks


def final_checks(urls, dsn, ids, writes, timeout):
    """(problems, notes): lost acknowledged writes, and instances that do not
    agree with the store (measured twice, 1.2 s apart: the bus bound)."""
    problems, notes = [], []
    rows = store_rows(dsn, ids)
    last = {}
    for write in sorted(filter(acked, writes), key=lambda w: w["t1"]):
        product_id = write["id"]
        if product_id not in last or write["version"] >= last[product_id]["version"]:
            last[product_id] = write
    lost = mismatched = superseded = 0
    for write in filter(acked, writes):
        row = rows.get(write["id"])
        if row is None or row["version"] < write["version"]:
            lost += 1
            problems.append(
                f"lost write: {write['method']} /products/{write['id']} acknowledged version "
                f"{write['version']} at {write['t1']:.3f}, the store has "
                f"{'no row' if row is None else 'version ' + str(row['version'])}"
            )
    for product_id, write in sorted(last.items()):
        row = rows.get(product_id)
        if row is None or row["version"] != write["version"]:
            if row is not None and row["version"] > write["version"]:
                superseded += 1
            continue
        got = write["product"]
        for field in ("name", "description", "price", "category", "in_stock"):
            if field == "price":
                same = abs(float(row[field]) - float(got[field])) < 0.005
            else:
                same = row[field] == got[field]
            if not same:
                mismatched += 1
                problems.append(
                    f"product {product_id} version {row['version']}: store {field}={row[field]!r}, "
                    f"the acknowledged write answered {got[field]!r}"
                )
    notes.append(
        f"{sum(map(acked, writes))} acknowledged writes of {len(writes)} on {len(last)} products: "
        f"{lost} lost, {mismatched} field mismatches; {superseded} products' newest store version "
        f"is from an unacknowledged write (a 5xx or a timeout whose change committed)"
    )
    clients = [Http(url, timeout) for url in urls]
    diverged = snapshot(clients, dsn, ids)
    if diverged:
        time.sleep(1.2)
        first = diverged
        diverged = snapshot(clients, dsn, ids)
        notes.append(f"first agreement check: {len(first)} products diverged; 1.2 s later: {len(diverged)}")
    unacked_versions = {}
    for write in writes:
        if not acked(write):
            unacked_versions.setdefault(write["id"], 0)
            unacked_versions[write["id"]] += 1
    for product_id, seen in sorted(diverged.items()):
        hint = ""
        if last.get(product_id) and seen["store"] and seen["store"] > last[product_id]["version"]:
            hint = (f" (store version is newer than the last acknowledged write, "
                    f"{last[product_id]['version']}: an unacknowledged write committed)")
        problems.append(
            f"divergence at the end: product {product_id} store version {seen['store']}, "
            f"instances answer {seen['instances']}{hint}"
        )
    return problems, notes, diverged


def cmd_final(args):
    ids = parse_ids(args.ids)
    writes = load_writes(args.writes)
    problems, notes, _ = final_checks(args.urls.split(","), args.dsn, ids, writes, args.timeout)
    for note in notes:
        print(note)
    for problem in problems:
        print("FAIL:", problem)
    print("final check:", "FAILED" if problems else "ok")
    return 1 if problems else 0


# ---------------------------------------------------------------- chaos report


def parse_wrk(path):
    """The CHAOS line of bench/chaos_reads.lua, or None."""
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith("CHAOS "):
                fields = dict(item.split("=", 1) for item in line.split()[1:])
                tallies = {}
                for name in ("status", "x_cache"):
                    tallies[name] = {}
                    for item in filter(None, fields.pop(name, "").split(",")):
                        key, n = item.rsplit(":", 1)
                        tallies[name][int(key) if name == "status" else key] = int(n)
                out = {k: int(v) for k, v in fields.items()}
                out.update(tallies)
                return out
    return None


def fmt_ms(us):
    return "-" if us is None else (f"{us / 1000:.1f}ms" if us < 1_000_000 else f"{us / 1e6:.2f}s")


def fmt_counts(counts):
    return ",".join(f"{k}:{v}" for k, v in sorted(counts.items(), key=lambda kv: str(kv[0]))) or "0"


def add_counts(total, counts):
    for key, n in counts.items():
        total[key] = total.get(key, 0) + n


def stale_reads(reads, ack_index, bus_grace):
    """Reads (status 200) answering an older version than a write that was
    acknowledged before the read began (plus `bus_grace` s for instances
    other than the writer's, instance 0)."""
    out = []
    for read in reads:
        if read["status"] != 200 or read["version"] is None or read["kind"] != "written":
            continue
        grace = 0.0 if read["instance"] == 0 else bus_grace
        required = None
        for t1, version in ack_index.get(read["id"], ()):
            if t1 + grace <= read["t0"]:
                required = version if required is None else max(required, version)
            else:
                break
        if required is not None and read["version"] < required:
            out.append((read, required))
    return out


def cached_5xx(reads, writes):
    """5xx reads of a written product on an instance that had answered it
    (200) after every write attempt on it that began before the read: that
    instance held a cached copy nothing had invalidated, so the fail-safe
    should have answered it."""
    attempts = {}
    for write in writes:
        attempts.setdefault(write["id"], []).append((write["t0"], write["t1"]))
    served = {}
    for read in reads:
        if read["kind"] == "written" and read["status"] == 200:
            served.setdefault((read["instance"], read["id"]), []).append((read["t0"], read["t1"]))
    out = []
    for read in reads:
        if read["kind"] != "written" or not (isinstance(read["status"], int) and read["status"] >= 500):
            continue
        # The latest end of a write attempt begun before this read (one still
        # in flight ends after it, and then nothing below qualifies).
        last_write = max((t1 for t0, t1 in attempts.get(read["id"], ()) if t0 < read["t0"]), default=0.0)
        copies = [r for r in served.get((read["instance"], read["id"]), ()) if r[0] > last_write and r[1] < read["t0"]]
        if copies:
            out.append((read, copies[-1]))
    return out


def percentile(values, fraction):
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * fraction))] if values else None


def describe(product_id, seen, names=("A", "B")):
    """`id 7: store v5, A v5, B v3` from a snapshot entry."""
    answers = ", ".join(f"{n} {a if isinstance(a, str) else 'v' + str(a)}" for n, a in zip(names, seen["instances"]))
    return f"id {product_id}: store v{seen['store']}, {answers}"


def cmd_report(args):
    work = args.work
    ttl = args.ttl
    names = ["A", "B"]
    phases = []
    with open(os.path.join(work, "events.tsv"), encoding="utf-8") as f:
        for line in f:
            p = line.rstrip("\n").split("\t")
            phases.append({
                "name": p[0], "kind": p[1], "start": float(p[2]), "fault": float(p[3]),
                "heal": float(p[4]), "end": float(p[5]),
                "rss": [int(p[6]), int(p[7]), int(p[8]), int(p[9])],
            })
    writes = load_writes(os.path.join(work, "writes-*.jsonl"))
    reads = load_reads(os.path.join(work, "reads.csv"))
    ack_index = {}
    for write in sorted(filter(acked, writes), key=lambda w: w["t1"]):
        ack_index.setdefault(write["id"], []).append((write["t1"], write["version"]))
    stale = stale_reads(reads, ack_index, bus_grace=1.0)
    written_cached_5xx = cached_5xx(reads, writes)

    failures, observations = [], []
    dropped_by_warm = []
    harness = os.path.join(work, "failures.txt")
    if os.path.exists(harness):
        with open(harness, encoding="utf-8") as f:
            failures.extend(f"harness: {line.strip()}" for line in f if line.strip())
    rows1, rows2 = [], []
    for phase in phases:
        name = phase["name"]
        fault_wrk = [parse_wrk(os.path.join(work, f"{name}.fault.{n}.wrk")) for n in names]
        prepass = [parse_wrk(os.path.join(work, f"{name}.prepass.{n}.wrk")) for n in names]
        for n, run in zip(names, prepass):
            if run and sum(v for k, v in run["x_cache"].items() if k != "HIT-L1") > args.hot // 2:
                dropped_by_warm.append(f"{name} {n} {fmt_counts(run['x_cache'])}")
        recovery_wrk = [parse_wrk(os.path.join(work, f"{name}.recovery.{n}.wrk")) for n in names]
        for window, runs in (("fault", fault_wrk), ("recovery", recovery_wrk)):
            for n, run in zip(names, runs):
                if run is None:
                    failures.append(f"{name}: wrk on {n} ({window} window) printed no result")
        requests = sum(r["requests"] for r in fault_wrk + recovery_wrk if r)
        non2xx = {"fault": {}, "recovery": {}}
        not_l1 = {}
        for run in filter(None, fault_wrk):
            add_counts(not_l1, {k: v for k, v in run["x_cache"].items() if k != "HIT-L1"})
        hot5xx = 0
        sock_errors = 0
        for window, runs in (("fault", fault_wrk), ("recovery", recovery_wrk)):
            for run in filter(None, runs):
                add_counts(non2xx[window], {k: v for k, v in run["status"].items() if not 200 <= k < 300})
                hot5xx += sum(v for k, v in run["status"].items() if k >= 500)
                sock_errors += run["connect"] + run["read"] + run["write"] + run["timeout"]
        if hot5xx:
            failures.append(f"{name}: {hot5xx} 5xx answers for the hot, pre-cached set "
                            f"(fault window {fmt_counts(non2xx['fault'])}, recovery {fmt_counts(non2xx['recovery'])})")
        p99 = "/".join(fmt_ms(r["p99_us"]) if r else "-" for r in fault_wrk)
        peak = "/".join(fmt_ms(r["max_us"]) if r else "-" for r in fault_wrk)

        in_phase = [w for w in writes if w["tag"] == name]
        ok = sum(map(acked, in_phase))
        failed = {}
        for write in in_phase:
            if not acked(write):
                failed[write["status"]] = failed.get(write["status"], 0) + 1
        phase_reads = [r for r in reads if phase["start"] <= r["t0"] < phase["end"]]
        cold_fault = [r for r in phase_reads if r["kind"] == "cold" and phase["fault"] <= r["t0"] < phase["heal"]]
        cold_ms = [1000 * (r["t1"] - r["t0"]) for r in cold_fault]
        no_retry_after = sum(1 for r in phase_reads if r["status"] == 503 and not r["retry_after"])
        if no_retry_after:
            observations.append(f"{name}: {no_retry_after} 503 answers without Retry-After (SPEC §8)")
        cached = [(r, c) for r, c in written_cached_5xx if phase["start"] <= r["t0"] < phase["end"]]
        if cached:
            examples = "; ".join(
                f"{names[r['instance']]} id {r['id']} HTTP {r['status']} at heal{r['t0'] - phase['heal']:+.2f}s, "
                f"served 200 at heal{c[0] - phase['heal']:+.2f}s with no write since" for r, c in cached[:3])
            failures.append(f"{name}: {len(cached)} 5xx answers for written products the instance "
                            f"had cached (served since their last write): {examples}")
        read_non200 = {"written": {}, "cold": {}}
        for read in phase_reads:
            if read["status"] != 200:
                bucket = read_non200[read["kind"]]
                bucket[read["status"]] = bucket.get(read["status"], 0) + 1
        phase_stale = [(r, v) for r, v in stale if phase["start"] <= r["t0"] < phase["end"]]
        late = [(r, v) for r, v in phase_stale if r["t0"] >= phase["heal"] + ttl + 1]
        after1 = [(r, v) for r, v in phase_stale if r["t0"] >= phase["heal"] + 1]
        writer_stale = [(r, v) for r, v in phase_stale if r["instance"] == 0]
        if phase["kind"] == "redis":
            # The writer never answers older than it acknowledged, Redis
            # failing or not; the others may until their L1 TTL.
            bad = writer_stale + [(r, v) for r, v in late if r["instance"] != 0]
            rule = "on A after its own ack, or on B after heal + L1_TTL + 1 s"
        else:
            bad = phase_stale
            rule = "with Redis and the bus healthy (A: after its own ack; B: 1 s after it)"
        if bad:
            examples = "; ".join(
                f"{names[r['instance']]} id {r['id']} v{r['version']} < acked v{v} "
                f"at heal{r['t0'] - phase['heal']:+.2f}s ({r['x_cache']})" for r, v in bad[:4])
            failures.append(f"{name}: {len(bad)} stale reads {rule}: {examples}")

        measure_path = os.path.join(work, f"{name}.measure.json")
        measure = {}
        if os.path.exists(measure_path):
            with open(measure_path, encoding="utf-8") as f:
                measure = json.load(f)
        else:
            failures.append(f"{name}: no recovery measurement")
        div1, div2 = measure.get("div1", {}), measure.get("div2", {})
        if measure and measure.get("recovery_s") is None:
            failures.append(f"{name}: not recovered within {args.recovery_timeout:.0f} s of the heal "
                            "(health ok and every written product at the store's version on A and B)")
        if div1.get("count"):
            observations.append(
                f"{name}: {div1['count']} written products diverged at heal + {div1['offset']:.1f} s "
                f"(e.g. {describe(*next(iter(div1['products'].items())))}); "
                f"{len(after1)} stale reads began after heal + 1 s (A {sum(r['instance'] == 0 for r, _ in after1)}, "
                f"B {sum(r['instance'] == 1 for r, _ in after1)}; the last at heal + "
                f"{max((r['t0'] - phase['heal'] for r, _ in after1), default=0):.1f} s)"
                + (" (SPEC §8: no older version once Redis answers again for longer than 1 s)"
                   if phase["kind"] == "redis" else ""))
        if div2.get("count"):
            examples = "; ".join(describe(i, d) for i, d in list(div2["products"].items())[:4])
            failures.append(f"{name}: {div2['count']} products still diverge at heal + "
                            f"{div2['offset']:.1f} s (bound: L1_TTL + 1 s): {examples}")

        rss = phase["rss"]
        rows1.append([
            name, str(requests), fmt_counts(non2xx["fault"]), fmt_counts(non2xx["recovery"]),
            str(hot5xx), str(sock_errors), fmt_counts(not_l1), p99, peak,
            fmt_counts(read_non200["written"]), f"{len(cached)}", fmt_counts(read_non200["cold"]),
            "/".join(fmt_ms(1000 * v) if v is not None else "-"
                     for v in (percentile(cold_ms, 0.99), max(cold_ms, default=None))) + f" n={len(cold_ms)}",
        ])
        rows2.append([
            name, f"{ok}", fmt_counts(failed),
            f"{fmt_s(measure.get('recovery_s'))} (health {fmt_s(measure.get('health_s'))}, "
            f"versions {fmt_s(measure.get('versions_s'))})",
            f"{div1.get('count', '-')} @{div1.get('offset', 0):.1f}s",
            f"{div2.get('count', '-')} @{div2.get('offset', 0):.1f}s",
            f"{len(phase_stale)}/{len(after1)}/{len(late)} (A {len(writer_stale)})",
            f"{rss[0] // 1024}→{rss[2] // 1024}", f"{rss[1] // 1024}→{rss[3] // 1024}",
        ])

    def table(header, rows):
        widths = [max(len(str(x)) for x in column) for column in zip(header, *rows)]
        for row in [header] + rows:
            print("  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip())

    print()
    print("Reads. wrk on A and B over the hot set (pre-cached): non-2xx in the fault and the recovery")
    print("window, 5xx of both, socket errors, answers not from L1 and latency in the fault window.")
    print("Reader on A and B: non-200 of the written set, 5xx of written products the instance had")
    print("cached, non-200 of uncached ids and their latency in the fault window.")
    table(["phase", "wrk reads", "non-2xx fault", "non-2xx recov", "hot 5xx", "sock err",
           "not HIT-L1 (fault)", "p99 A/B", "max A/B", "written non-200", "cached 5xx",
           "uncached non-200", "uncached p99/max (fault)"], rows1)
    print()
    print(f"Writes on A, recovery and consistency (L1_TTL {ttl:g} s); stale = reads older than an "
          "acknowledged write: all/after heal+1s/after heal+TTL+1s (A: those on the writer); RSS in MiB before→after.")
    table(["phase", "writes ok", "writes failed", "recovery", "diverged +1s", f"diverged +TTL+1s",
           "stale reads", "RSS A", "RSS B"], rows2)
    print()

    urls = args.urls.split(",")
    problems, notes, _ = final_checks(urls, args.dsn, parse_ids(args.ids), writes, args.timeout)
    for note in notes:
        print(note)
    failures.extend(problems)
    if dropped_by_warm:
        observations.insert(0,
            f"warming A then B (POST /cache/warm of ids 1..{args.hot} and the written set) left "
            "the hot set outside an instance's L1 at the read pass that follows (a warm by one instance "
            "drops the other's L1 copies): " + "; ".join(dropped_by_warm))
    if observations:
        print("\nObservations (not failures of this script's checks):")
        for observation in observations:
            print("  -", observation)
    if failures:
        print(f"\nFAILED ({len(failures)}):")
        for failure in failures:
            print("  -", failure)
        return 1
    print("\nall checks passed")
    return 0


# ---------------------------------------------------------------- soak summary


def cmd_soak_summary(args):
    with open(args.csv, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        print("no samples")
        return 1
    t_first = float(rows[0]["t"])
    t_last = float(rows[-1]["t"])
    warm_end = t_first + (t_last - t_first) * args.warmup
    after = [r for r in rows if float(r["t"]) >= warm_end]
    metrics = [k for k in rows[0].keys() if k != "t"]
    failures = []
    print(f"{len(rows)} samples, {len(after)} after the warm-up ({args.warmup:.0%} of the run)")
    print(f"{'metric':<22} {'first':>10} {'min':>10} {'max':>10} {'last':>10} {'allowed':>21}  ok")
    for metric in metrics:
        values = [float(r[metric]) for r in after if r[metric] != ""]
        if len(values) < 2:
            failures.append(f"{metric}: fewer than 2 samples after the warm-up")
            continue
        first = values[0]
        slack = max(0.10 * first, args.absolute if not metric.startswith("rss") else 0)
        low, high = first - slack, first + slack
        ok = low <= min(values) and max(values) <= high
        if not ok:
            failures.append(f"{metric}: {min(values):g}..{max(values):g} leaves {low:g}..{high:g}")
        print(f"{metric:<22} {first:>10g} {min(values):>10g} {max(values):>10g} {values[-1]:>10g} "
              f"{f'{low:g}..{high:g}':>21}  {'yes' if ok else 'NO'}")
    for failure in failures:
        print("FAIL:", failure)
    return 1 if failures else 0


# ---------------------------------------------------------------- main


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    w = sub.add_parser("writer", help="PUT/PATCH products until the stop file appears")
    w.add_argument("--urls", required=True, help="comma-separated base URLs; writes rotate over them")
    w.add_argument("--ids", required=True)
    w.add_argument("--token", required=True)
    w.add_argument("--log", required=True)
    w.add_argument("--tag", default="run")
    w.add_argument("--rate", type=float, default=20.0, help="writes a second, all threads")
    w.add_argument("--threads", type=int, default=4, help="each owns a share of the ids")
    w.add_argument("--timeout", type=float, default=40.0)
    w.add_argument("--stop-file", required=True)
    w.add_argument("--max-seconds", type=float, default=3600.0)

    r = sub.add_parser("reader", help="GET the written products on every instance")
    r.add_argument("--urls", required=True)
    r.add_argument("--ids", required=True)
    r.add_argument("--cold", default="", help="ids read now and then, mostly uncached")
    r.add_argument("--cold-rate", type=float, default=10.0, help="uncached reads a second per instance")
    r.add_argument("--log", required=True)
    r.add_argument("--rate", type=float, default=100.0, help="reads a second per instance")
    r.add_argument("--timeout", type=float, default=40.0)
    r.add_argument("--stop-file", required=True)
    r.add_argument("--max-seconds", type=float, default=3600.0)

    m = sub.add_parser("measure", help="recovery time and divergence after a heal")
    m.add_argument("--urls", required=True)
    m.add_argument("--ids", required=True)
    m.add_argument("--dsn", required=True)
    m.add_argument("--heal", type=float, required=True, help="epoch seconds of the heal")
    m.add_argument("--ttl", type=float, required=True)
    m.add_argument("--recovery-timeout", type=float, default=30.0)
    m.add_argument("--timeout", type=float, default=10.0)
    m.add_argument("--out", required=True)

    fi = sub.add_parser("final", help="no acknowledged write lost; instances agree with the store")
    fi.add_argument("--urls", required=True)
    fi.add_argument("--ids", required=True)
    fi.add_argument("--dsn", required=True)
    fi.add_argument("--writes", required=True, help="glob of writer logs")
    fi.add_argument("--timeout", type=float, default=10.0)

    rp = sub.add_parser("report", help="bench/chaos.sh's tables and verdict")
    rp.add_argument("--work", required=True)
    rp.add_argument("--urls", required=True)
    rp.add_argument("--ids", required=True)
    rp.add_argument("--dsn", required=True)
    rp.add_argument("--ttl", type=float, required=True)
    rp.add_argument("--hot", type=int, required=True, help="size of the hot set")
    rp.add_argument("--recovery-timeout", type=float, default=30.0)
    rp.add_argument("--timeout", type=float, default=10.0)

    s = sub.add_parser("soak-summary", help="bench/soak.sh's series summary")
    s.add_argument("csv")
    s.add_argument("--warmup", type=float, default=0.2, help="fraction of the run ignored")
    s.add_argument("--absolute", type=float, default=2.0,
                   help="absolute slack for the counters (fds, connections)")

    args = parser.parse_args()
    handler = {
        "writer": cmd_writer, "reader": cmd_reader, "measure": cmd_measure, "final": cmd_final,
        "report": cmd_report, "soak-summary": cmd_soak_summary,
    }[args.command]
    sys.exit(handler(args) or 0)


if __name__ == "__main__":
    main()
