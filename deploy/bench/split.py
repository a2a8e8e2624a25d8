#!/usr/bin/env python3
"""Long media across the cluster (`make bench-split`): one long file (long.wav looped to about
11 minutes) transcribed on 1, 2 and 3 nodes, every node with one Transcriber of one thread
(tiny.en). One node transcribes it whole; two and three split it at quiet points into
chunks of at most about 2 minutes (the default), as many as a multiple of the Transcribers. Prints, per cluster size, the transcribe step's wall
time, the speed-up over one node, the WER against the known text, and where the chunks ran.

These machines have 2 cores, so 3 single-thread nodes share 2 cores. The expected time on
separate machines is derived from the two-node run, where each node has a core of its own:
each chunk's measured time (handing out to transcript, media fetch included) is replayed
with the Transcriber's rule (chunks in order, each to whichever of k workers is free first),
which gives makespan_k; the split's own cost S (scanning the file for quiet points, the
merge, storing) is the two-node run's step time minus makespan_2; expected T_k = S +
makespan_k.

Usage: deploy/bench/split.py [--binary target/release/ytcaption] [--loops 6]
"""

import argparse
import heapq
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cluster  # noqa: E402  (the node helpers of deploy/bench/cluster.py)
from bench import wer  # noqa: E402  (the WER of deploy/bench/bench.py)


def makespan(lengths, workers):
    """Chunks handed out in order to whichever worker is free first."""
    free = [0.0] * workers
    for length in lengths:
        heapq.heappush(free, heapq.heappop(free) + length)
    return max(free)


def transcribe(nodes, url):
    status, job = cluster.http("POST", nodes[0].url("/v1/jobs"), {"url": url, "formats": ["txt"]})
    assert status == 202, status
    done = cluster.wait_state(nodes[0], job["id"], ("completed", "failed"), timeout=3600)
    assert done["state"] == "completed", done
    text = cluster.urllib.request.urlopen(nodes[0].url(f"/v1/jobs/{job['id']}/transcript?format=txt")).read().decode()
    chunks = (done.get("placement") or {}).get("chunks") or []
    return done["timings_ms"]["transcribe"] / 1000.0, text, chunks, done["duration_s"]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--binary", default=os.path.join(cluster.REPO, "target", "release", "ytcaption"))
    parser.add_argument("--loops", type=int, default=6, help="copies of long.wav in the file")
    args = parser.parse_args()
    root = tempfile.mkdtemp(prefix="ytcaption-bench-split-")
    os.environ.setdefault("YTCAPTION_MODELS_DIR", os.path.expanduser("~/.local/share/ytcaption/models"))
    # Split anything over 5 minutes, in chunks of at most about 2 minutes (the default).
    os.environ["YTCAPTION_TRANSCRIBER__SPLIT_ABOVE"] = "5m"
    media_dir = os.path.join(root, "media")
    os.makedirs(media_dir)
    source = os.path.join(cluster.FIXTURES, "long.wav")
    listing = os.path.join(root, "list.txt")
    with open(listing, "w") as f:
        f.writelines(f"file '{source}'\n" for _ in range(args.loops))
    subprocess.run(["ffmpeg", "-loglevel", "error", "-f", "concat", "-safe", "0", "-i", listing,
                    "-c", "copy", os.path.join(media_dir, "talk.wav")], check=True)
    with open(os.path.join(cluster.FIXTURES, "long.txt")) as f:
        reference = " ".join([f.read()] * args.loops)
    port = cluster.free_port()
    media = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
                             cwd=media_dir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/talk.wav"
    results = {}
    try:
        time.sleep(0.5)
        for n in (1, 2, 3):
            os.makedirs(os.path.join(root, f"c{n}"))
            nodes = cluster.cluster(args.binary, os.path.join(root, f"c{n}"), n) if n > 1 else [
                cluster.Node(args.binary, os.path.join(root, "c1"), "solo", None, 0)]
            try:
                results[n] = transcribe(nodes, url)
            finally:
                for node in nodes:
                    node.stop()
        seconds1, _, _, duration = results[1]
        print(f"file: {duration:.0f} s of speech ({args.loops} x long.wav), tiny.en, 1 thread per node, 2 shared cores")
        for n, (seconds, text, chunks, _) in results.items():
            where = {}
            for chunk in chunks:
                where[chunk["node"]] = where.get(chunk["node"], 0) + 1
            print(f"{n} node(s): transcribe {seconds:6.1f} s  speed-up {seconds1 / seconds:4.2f}x  "
                  f"WER {100 * wer(reference, text):4.1f}%  chunks {len(chunks)} {where or ''}")
        # Expected on separate machines (see the docstring).
        _, _, chunks, _ = results[2]
        costs = [c["ms"] / 1000.0 for c in chunks]
        split_cost = results[2][0] - makespan(costs, 2)
        print(f"model: {len(costs)} chunks of {', '.join(f'{c:.1f}' for c in costs)} s (2-node run), "
              f"split cost S = {split_cost:.1f} s")
        for n in (2, 3, 4):
            expected = split_cost + makespan(costs, n)
            print(f"expected on {n} separate machines: {expected:6.1f} s  speed-up {seconds1 / expected:4.2f}x")
    finally:
        media.kill()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
