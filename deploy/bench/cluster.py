#!/usr/bin/env python3
"""Cluster figures, measured with real node processes on 127.0.0.1 (`make bench-cluster`).

- Dispatch overhead: the same short jobs on one node, then on two nodes where the ingress
  node runs no workers (every step is placed on the peer and every change is replicated);
  per-job orchestration overhead (elapsed - engine time), p50 and p99, and the difference
  per step.
- Crash detection: `kill -9` of a node until a peer marks it down (its `since_ms`).
- Hang detection: SIGSTOP of a node until a peer marks it down.
- Takeover: `kill -9` of a job's owner mid-transcription until the successor records itself
  as owner (the `owner` event), and until the job's next step starts there.

Usage: deploy/bench/cluster.py [--binary target/release/ytcaption] [--jobs 30] [--rounds 5]
"""

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURES = os.path.join(REPO, "tests", "fixtures", "generated")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def now_ms():
    return int(time.time() * 1000)


def http(method, url, body=None, timeout=10):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, None
    except OSError:
        return 0, None


def pct(values, p):
    values = sorted(values)
    if not values:
        return float("nan")
    k = min(len(values) - 1, max(0, round(p / 100 * (len(values) - 1))))
    return values[k]


class Node:
    def __init__(self, binary, root, name, seeds, cluster_port, roles=None):
        self.name = name
        self.http_port = free_port()
        self.cluster_port = cluster_port
        self.data = os.path.join(root, name)
        self.env = dict(os.environ)
        self.env.update({
            "YTCAPTION_NODE_NAME": name,
            "YTCAPTION_DATA_DIR": self.data,
            "YTCAPTION_HTTP__LISTEN": f"127.0.0.1:{self.http_port}",
            "YTCAPTION_TRANSCRIBER__MODEL": "tiny.en",
            "YTCAPTION_TRANSCRIBER__WORKERS": "1",
            "YTCAPTION_TRANSCRIBER__THREADS": "1",
            "YTCAPTION_DOWNLOADER__ALLOW_PRIVATE": "127.0.0.1/32",
            "YTCAPTION_LOG__LEVEL": "warn",
        })
        if seeds is not None:
            self.env.update({
                "YTCAPTION_CLUSTER__LISTEN": f"127.0.0.1:{cluster_port}",
                "YTCAPTION_CLUSTER__SEEDS": seeds,
                "YTCAPTION_CLUSTER__COOKIE": "bench-cookie",
                "YTCAPTION_CLUSTER__RECONNECT_CAP": "1s",
            })
            if roles is not None:
                self.env["YTCAPTION_CLUSTER__ROLES"] = roles
        self.binary = binary
        self.process = None
        self.start()

    def start(self):
        log = open(self.data + ".log", "ab")
        self.process = subprocess.Popen([self.binary, "serve"], env=self.env, stdout=log, stderr=log)
        deadline = time.time() + 60
        while time.time() < deadline:
            if http("GET", self.url("/readyz"))[0] == 200:
                return
            time.sleep(0.05)
        raise SystemExit(f"{self.name} did not start; see {self.data}.log")

    def url(self, path):
        return f"http://127.0.0.1:{self.http_port}{path}"

    def kill9(self):
        self.process.kill()
        self.process.wait()

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def member(self, peer):
        status, body = http("GET", self.url("/v1/admin/status"))
        if status != 200 or not body.get("cluster"):
            return None
        for member in body["cluster"]["members"]:
            if member["name"] == peer:
                return member
        return None


def cluster(binary, root, n, roles=None):
    ports = [free_port() for _ in range(n)]
    seeds = ",".join(f"127.0.0.1:{p}" for p in ports)
    nodes = [Node(binary, root, f"n{i + 1}", seeds, ports[i], (roles or {}).get(i)) for i in range(n)]
    deadline = time.time() + 30
    while time.time() < deadline:
        if all((m := a.member(b.name)) and m["state"] == "alive" for a in nodes for b in nodes if a is not b):
            return nodes
        time.sleep(0.05)
    raise SystemExit("no full mesh")


def wait_state(node, job_id, states, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        status, job = http("GET", node.url(f"/v1/jobs/{job_id}"))
        if status == 200 and job["state"] in states:
            return job
        time.sleep(0.02)
    raise SystemExit(f"job {job_id} never reached {states}")


def overheads(node, media, jobs):
    result = []
    for _ in range(jobs):
        status, job = http("POST", node.url("/v1/jobs"), {"url": media, "formats": ["txt"]})
        assert status == 202, status
        done = wait_state(node, job["id"], ("completed", "failed"))
        assert done["state"] == "completed", done
        result.append(done["elapsed_ms"] - done["engine_ms"])
    return result


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--binary", default=os.path.join(REPO, "target", "release", "ytcaption"))
    parser.add_argument("--jobs", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    root = tempfile.mkdtemp(prefix="ytcaption-bench-cluster-")
    if not os.environ.get("YTCAPTION_MODELS_DIR"):
        os.environ["YTCAPTION_MODELS_DIR"] = os.path.expanduser("~/.local/share/ytcaption/models")
    media_port = free_port()
    media = subprocess.Popen([sys.executable, "-m", "http.server", str(media_port), "--bind", "127.0.0.1"],
                             cwd=FIXTURES, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    short = f"http://127.0.0.1:{media_port}/news_espeak.wav"
    long = f"http://127.0.0.1:{media_port}/long.wav"
    nodes = []
    try:
        time.sleep(0.5)
        # 1. Dispatch overhead: one node vs. two where n1 has no workers at all.
        single = Node(args.binary, root, "solo", None, 0)
        nodes.append(single)
        overheads(single, short, 3)  # warm-up
        solo = overheads(single, short, args.jobs)
        single.stop()
        pair = cluster(args.binary, root, 2, roles={0: ""})
        nodes.extend(pair)
        overheads(pair[0], short, 3)
        remote = overheads(pair[0], short, args.jobs)
        for node in pair:
            node.stop()
        print(f"dispatch: one node   overhead p50 {pct(solo, 50):.0f} ms  p99 {pct(solo, 99):.0f} ms  ({args.jobs} jobs)")
        print(f"dispatch: two nodes  overhead p50 {pct(remote, 50):.0f} ms  p99 {pct(remote, 99):.0f} ms  (all 4 steps remote, log replicated)")
        print(f"dispatch: added per job p50 {pct(remote, 50) - pct(solo, 50):.1f} ms, per step {(pct(remote, 50) - pct(solo, 50)) / 4:.1f} ms")

        # 2-4. Detection and takeover on three nodes.
        trio = cluster(args.binary, root, 3)
        nodes.extend(trio)
        crash, hang, takeover, resume = [], [], [], []
        for _ in range(args.rounds):
            victim = trio[2]
            killed = now_ms()
            victim.kill9()
            while not ((m := trio[0].member(victim.name)) and m["state"] == "down"):
                time.sleep(0.005)
            crash.append(m["since_ms"] - killed)
            victim.start()
            while not ((m := trio[0].member(victim.name)) and m["state"] == "alive"):
                time.sleep(0.02)
        for _ in range(max(2, args.rounds // 2)):
            victim = trio[2]
            stopped = now_ms()
            victim.process.send_signal(signal.SIGSTOP)
            while not ((m := trio[0].member(victim.name)) and m["state"] == "down"):
                time.sleep(0.01)
            hang.append(m["since_ms"] - stopped)
            victim.process.send_signal(signal.SIGCONT)
            while not ((m := trio[0].member(victim.name)) and m["state"] == "alive"):
                time.sleep(0.02)
        for round_ in range(args.rounds):
            owner = trio[0]
            status, job = http("POST", owner.url("/v1/jobs"), {"url": long, "formats": ["txt"]})
            assert status == 202
            wait_state(owner, job["id"], ("transcribing",))
            time.sleep(0.3)
            killed = now_ms()
            owner.kill9()
            survivor = trio[1]
            deadline = time.time() + 60
            owner_at = resumed_at = None
            while time.time() < deadline and resumed_at is None:
                status, history = http("GET", survivor.url(f"/v1/jobs/{job['id']}/history"))
                if status == 200:
                    for event in history["events"]:
                        body = event["event"]
                        if "owner" in body and body["owner"]["epoch"] >= 2:
                            owner_at = body["owner"]["at"]
                        elif owner_at and "step_started" in body and body["step_started"]["at"] >= owner_at:
                            resumed_at = body["step_started"]["at"]
                            break
                time.sleep(0.01)
            if owner_at:
                takeover.append(owner_at - killed)
            if resumed_at:
                resume.append(resumed_at - killed)
            wait_state(survivor, job["id"], ("completed",))
            owner.start()
            while not ((m := trio[1].member(owner.name)) and m["state"] == "alive"):
                time.sleep(0.02)
        print(f"crash detection (kill -9): p50 {pct(crash, 50)} ms  max {max(crash)} ms  ({len(crash)} kills)")
        print(f"hang detection (SIGSTOP):  p50 {pct(hang, 50)} ms  max {max(hang)} ms  ({len(hang)} pauses)")
        print(f"takeover (kill -> new owner recorded): p50 {pct(takeover, 50)} ms  max {max(takeover) if takeover else 'n/a'} ms")
        print(f"takeover (kill -> next step started):  p50 {pct(resume, 50)} ms  max {max(resume) if resume else 'n/a'} ms  ({len(resume)} kills)")
    finally:
        for node in nodes:
            node.stop()
        media.kill()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
