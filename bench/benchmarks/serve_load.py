"""The service under load: 8 clients searching a 100,000-image index for 60 s while
`imgsearch index` adds images to it, then a check that everything the writer committed is
searchable (issue 14).

    python bench/benchmarks/serve_load.py FLICKR8K_DIR [--images 100000] [--clients 8] [--seconds 60]

1. The index: the packaged photo model indexes --real Flickr8k photos for real; the rest of
   the 100,000 rows are synthetic (each a real image's global vector plus Gaussian noise with
   the real vectors' covariance, L2-normalised, as bench/benchmarks/query.py makes them; the real image's
   region features), written straight into the store, then vectors.faiss is rebuilt (IVF at
   this size, as `imgsearch index` would build it).
2. `imgsearch serve` in its own process; `imgsearch index` on --add more Flickr8k photos in
   another, started with the clients.
3. Each client: POST /api/search with a Flickr8k dev caption (k=24, re-ranked), back to back,
   for --seconds. Latency per request (client side), errors (any status but 200, or a broken
   connection).
4. After the writer ends: /api/index must count every image the store holds, and each image
   the writer added, sent as an image query (its file uploaded), must come back first.

Prints a markdown section (appended to bench/RESULTS.md by bench/benchmarks/serve_load.sh).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from bench.benchmarks.machine import describe, percentiles_ms
from bench.benchmarks.query import synthetic_vectors
from imgsearch.ground.errors import ImageNotFound
from imgsearch.images.decode import ImageRecord
from imgsearch.index import DB_NAME, Index
from imgsearch.storage.lock import WriterLock
from imgsearch.storage.manifest import Manifest
from imgsearch.storage.store import Put, Store


def read_captions(data: Path, split: str, count: int, seed: int) -> list[str]:
    names = set((data / f"{split}.txt").read_text().split())
    captions = [
        line.split("\t")[2]
        for line in (data / "captions.tsv").read_text().splitlines()[1:]
        if line.split("\t")[0] in names
    ]
    return random.Random(seed).sample(captions, count)


def build_index(directory: Path, data: Path, real: int, total: int, seed: int) -> tuple[int, float]:
    """An index of `total` images: `real` Flickr8k train photos indexed for real, the rest synthetic
    rows written into its store as a writer writes (holding the writer lock); opening the index
    after them rebuilds vectors.faiss, now out of step with the store."""
    photos = sorted((data / "train.txt").read_text().split())[:real]
    folder = directory.parent / "real-photos"
    folder.mkdir(parents=True)
    for name in photos:
        os.symlink(data / "images" / name, folder / name)
    started = time.perf_counter()
    with Index.create(directory) as index:
        index.add([folder])
    manifest = Manifest.read(directory)
    with WriterLock(directory):
        store = Store(directory / DB_NAME, manifest.embed_dim, manifest.num_regions)
        try:
            ids, vectors = store.global_vectors()  # (n, d)
            regions = store.regions(ids.tolist())  # (n, R, d) float16
            synthetic = synthetic_vectors(vectors, total - len(ids), seed)
            for start in range(0, len(synthetic), 2000):
                batch = []
                for i in range(start, min(len(synthetic), start + 2000)):
                    sha = hashlib.sha256(f"synthetic {i}".encode()).hexdigest()
                    record = ImageRecord(
                        path=f"/synthetic/{i:08d}.jpg",
                        size=20_000,
                        mtime=1.6e9,
                        ctime=1.6e9,
                        sha256=sha,
                        width=500,
                        height=375,
                    )
                    batch.append(Put(record, synthetic[i], regions[i % len(ids)]))
                store.apply(batch)
        finally:
            store.close()
    with Index.open(directory) as index:  # rebuilds vectors.faiss from the store and saves it
        count = index.image_count()
    return count, time.perf_counter() - started


def is_indexed(index: Index, path: Path) -> bool:
    try:
        index.image_info(path)
        return True
    except ImageNotFound:
        return False


def wait_for_server(url: str, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited with status {process.returncode}")
        try:
            with urllib.request.urlopen(url + "api/health", timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise SystemExit("the server did not answer within 5 minutes")


def post_json(url: str, body: dict, timeout: float = 60) -> tuple[int, dict]:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, {}


def post_image(url: str, path: Path, k: int, timeout: float = 60) -> tuple[int, dict]:
    boundary = "imgsearch-bench-boundary"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="k"\r\n\r\n{k}\r\n'.encode(),
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{path.name}"\r\n'
        "Content-Type: image/jpeg\r\n\r\n".encode()
        + path.read_bytes()
        + b"\r\n",
        f"--{boundary}--\r\n".encode(),
    ]
    request = urllib.request.Request(
        url, b"".join(parts), {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, {}


def client(url: str, captions: list[str], stop_at: float, latencies: list[float], errors: list[str]) -> None:
    rng = random.Random(threading.get_ident())
    while time.time() < stop_at:
        started = time.perf_counter()
        try:
            status, _ = post_json(url + "api/search", {"query": rng.choice(captions), "k": 24})
        except OSError as exc:
            status = f"{type(exc).__name__}: {exc}"
        elapsed = time.perf_counter() - started
        if status == 200:
            latencies.append(elapsed)
        else:
            errors.append(str(status))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path, help="Flickr8k folder (captions.tsv, train.txt, dev.txt, images/)")
    parser.add_argument("--images", type=int, default=100_000, help="images in the index before the load")
    parser.add_argument("--real", type=int, default=1000, help="of them, Flickr8k photos indexed for real")
    parser.add_argument("--add", type=int, default=2000, help="photos `imgsearch index` adds during the load")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.data = args.data.resolve()  # the photos are linked into the index's folders by absolute path

    work = Path(tempfile.mkdtemp(prefix="imgsearch-load-"))
    try:
        index_dir = work / "index"
        count, build_seconds = build_index(index_dir, args.data, args.real, args.images, args.seed)
        if count < args.real:
            raise SystemExit(
                f"only {count} of {args.real} photos were indexed; see `imgsearch errors --index {index_dir}`"
            )
        print(f"index: {count} images, built in {build_seconds:.0f} s", file=sys.stderr)
        added_folder = work / "added-photos"
        added_folder.mkdir()
        train = sorted((args.data / "train.txt").read_text().split())
        for name in train[args.real : args.real + args.add]:
            os.symlink(args.data / "images" / name, added_folder / name)
        captions = read_captions(args.data, "dev", 500, args.seed)

        url = f"http://127.0.0.1:{args.port}/"
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        server_log = open(work / "server.log", "w")  # noqa: SIM115 - the server's stderr while it runs
        server = subprocess.Popen(
            [sys.executable, "-m", "imgsearch", "serve", "--index", str(index_dir), "--port", str(args.port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=server_log,
        )
        try:
            wait_for_server(url, server)
            writer_log = open(work / "writer.log", "w")  # noqa: SIM115 - the writer's stderr while it runs
            writer = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "imgsearch",
                    "index",
                    str(added_folder),
                    "--index",
                    str(index_dir),
                    "-q",
                    "--json",
                    "--batch-size",
                    "8",
                ],
                env=env,
                stdout=subprocess.PIPE,
                stderr=writer_log,
            )
            latencies: list[float] = []
            errors: list[str] = []
            started = time.time()
            stop_at = started + args.seconds
            threads = [
                threading.Thread(target=client, args=(url, captions, stop_at, latencies, errors))
                for _ in range(args.clients)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            load_seconds = time.time() - started
            writer_done_during_load = writer.poll() is not None
            if not writer_done_during_load:  # Ctrl-C: it stores the batches it has and stops
                writer.send_signal(signal.SIGINT)
            writer_out, _ = writer.communicate(timeout=600)
            summary = json.loads(writer_out or b"{}")

            with Index.open(index_dir) as index:
                stored = index.image_count()
                added_paths = [path for path in sorted(added_folder.iterdir()) if is_indexed(index, path)]
            post_json(url + "api/search", {"query": "a dog", "k": 1})  # the server catches up before a search
            with urllib.request.urlopen(url + "api/index", timeout=60) as response:
                served = json.loads(response.read())
            found_first, missing = 0, []
            for path in added_paths:
                status, body = post_image(url + "api/search", path, 1)
                if status == 200 and body["items"] and body["items"][0]["path"] == str(path):
                    found_first += 1
                else:
                    missing.append(str(path))
        finally:
            server.send_signal(signal.SIGINT)
            server.wait(timeout=60)

        p50, p95, p99 = percentiles_ms(latencies)
        stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        print(f"\n## Service under load, {stamp} (bench/benchmarks/serve_load.sh)\n")
        print(
            f"Machine: {describe()}. Index: {count:,} images before the load ({args.real:,} Flickr8k photos "
            f"indexed with the packaged photo model, the rest synthetic rows of real regions and noisy real "
            f"vectors; built in {build_seconds:.0f} s). `imgsearch serve` (one process) against "
            f"{args.clients} clients in threads of this process, each POSTing a Flickr8k dev caption to "
            f"/api/search (k=24, re-ranked, 100 candidates) back to back for {load_seconds:.0f} s, while "
            f"`imgsearch index --batch-size 8` added Flickr8k photos to the same index (one commit per 8 photos).\n"
        )
        print(
            "| clients | requests | errors | requests/s | p50 ms | p95 ms | p99 ms | writer: added | "
            "writer finished during the load | stored after | /api/index images | "
            "added images found first by image query |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|---|---|")
        print(
            f"| {args.clients} | {len(latencies) + len(errors)} | {len(errors)} | "
            f"{len(latencies) / load_seconds:.1f} | {p50:.0f} | {p95:.0f} | {p99:.0f} | "
            f"{summary.get('added', '?')} | {'yes' if writer_done_during_load else 'no (stopped with Ctrl-C)'} | "
            f"{stored:,} | {served.get('images', '?'):,} | {found_first} of {len(added_paths)} |"
        )
        if errors:
            print(f"\nErrors: {sorted(set(errors))[:10]}")
        if missing:
            print(f"\nNot found first: {missing[:10]}")
        print()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
