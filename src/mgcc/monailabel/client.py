#!/usr/bin/env python
"""Talk to a running MONAI Label server with MONAI Label's own client (`monailabel.client.MONAILabelClient`).

Runs in the MONAI Label environment (`.venv-label`); each command prints one JSON object with the HTTP
`status` (and `detail` when the server refused), and exits 1 when the server did not answer 200:

    .venv-label/bin/python src/mgcc/monailabel/client.py --url http://127.0.0.1:8000 info
    ... infer MODEL --image ID --out mask.png          # a datastore image
    ... infer MODEL --file scan.png --out mask.png     # an uploaded image
    ... save-label ID label.png [--tag final]
    ... score mgcc_disagreement                        # /scoring/{method}, waiting for it to finish
    ... next-sample mgcc_disagreement                  # /activelearning/{strategy}
    ... train MODEL --params '{"max_epochs": 2}'  /  ... train-status [--wait 600]
    ... benchmark [--model M] [--images a,b | --files LIST] [--n 100] [--concurrency 4] [--save-dir D]
        [--out FILE]                                   # load test of /infer

`mgcc label` (the launcher, main environment) runs this file in the MONAI Label environment.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from monailabel.client import MONAILabelClient
from monailabel.client.client import MONAILabelClientException, MONAILabelUtils

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class Refused(Exception):
    """The server answered something other than 200."""

    def __init__(self, status: int, detail: Any):
        super().__init__(f"{status}: {detail}")
        self.status, self.detail = status, detail


def _refusal(error: MONAILabelClientException) -> Refused:
    """MONAILabelClient puts the status and body into its message (`Status: 415; Response: {...}`)."""
    match = re.match(r"Status: (\d+); Response: (.*)", error.msg or "", re.S)
    if not match:
        return Refused(error.status_code or 0, error.msg)
    body = match.group(2)
    try:
        detail = json.loads(body).get("detail", body)
    except (ValueError, AttributeError):
        detail = body
    return Refused(int(match.group(1)), detail)


def infer(client: MONAILabelClient, model: str, out: Path, image: str = "", file: str | None = None) -> dict:
    """/infer/{model} on a datastore image or an uploaded file; the returned label is moved to `out`."""
    try:
        result, params = client.infer(model, image, {}, file=file)
    except MONAILabelClientException as e:
        raise _refusal(e) from None
    if result is None:
        raise Refused(200, f"no label image in the answer: {params}")
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(result, out)
    return {"out": str(out), "params": params}


def score(client: MONAILabelClient, method: str) -> dict:
    """/scoring/{method} with run_sync (MONAILabelClient has no scoring call; its own HTTP helper does it)."""
    selector = f"/scoring/{MONAILabelUtils.urllib_quote_plus(method)}?run_sync=true"
    status, body, _, _ = MONAILabelUtils.http_method("POST", client.get_server_url(), selector, {})
    if status != 200:
        raise Refused(status, body.decode(errors="replace") if isinstance(body, bytes) else body)
    return json.loads(body)


def wait_for_training(client: MONAILabelClient, timeout: float, poll: float = 2.0) -> dict:
    """The latest training task's record, once it is no longer submitted or running."""
    deadline = time.monotonic() + timeout
    while True:
        task = client.train_status()
        if task.get("status") not in ("SUBMITTED", "RUNNING"):
            return task
        if time.monotonic() > deadline:
            raise Refused(408, f"training still running after {timeout:.0f} s")
        time.sleep(poll)


def benchmark(
    url: str,
    model: str,
    images: list[str],
    n: int,
    concurrency: int,
    files: list[str] | None = None,
    save_dir: Path | None = None,
) -> dict:
    """`n` /infer requests from `concurrency` clients, each sending its share one after another (client `k` sends
    requests k, k + concurrency, ...), on datastore images or, with `files`, uploads (round robin); latencies in
    seconds. With `save_dir`, each answer's mask is kept as `<save_dir>/<request>.png` and every request is listed
    (`requests_detail`: index, client, image, status, latency, mask)."""
    sources = files or images

    def one(i: int) -> dict:
        with tempfile.TemporaryDirectory() as tmp:  # a client per request: results land in its own folder
            start = time.perf_counter()
            record = {"i": i, "client": i % concurrency, "image": sources[i % len(sources)], "status": 200}
            try:
                image, file = ("", sources[i % len(sources)]) if files else (sources[i % len(sources)], None)
                result, _ = MONAILabelClient(url, tmpdir=tmp).infer(model, image, {}, file=file)
                ok = result is not None and Path(result).read_bytes()[:8] == PNG_MAGIC
                record["error"] = "" if ok else "answer is not a PNG label"
                if ok and save_dir is not None:
                    record["mask"] = str(shutil.move(result, Path(save_dir) / f"{i:05d}.png"))
            except MONAILabelClientException as e:
                refused = _refusal(e)
                record.update(status=refused.status, error=str(refused.detail)[:200])
            record["latency_s"] = time.perf_counter() - start
            return record

    def client(k: int) -> list[dict]:
        return [one(i) for i in range(k, n, concurrency)]

    if save_dir is not None:
        Path(save_dir).mkdir(parents=True, exist_ok=True)
    wall = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        results = sorted((r for rs in pool.map(client, range(concurrency)) for r in rs), key=lambda r: r["i"])
    wall = time.perf_counter() - wall
    latencies = sorted(r["latency_s"] for r in results)
    failures = [r["error"] for r in results if r["error"]]
    summary = {
        "requests": n,
        "concurrency": concurrency,
        "succeeded": n - len(failures),
        "failed": len(failures),
        "failures": failures[:5],
        "latency_s": {
            "median": statistics.median(latencies),
            "p95": float(np.percentile(latencies, 95, method="inverted_cdf")),  # nearest rank
            "mean": statistics.fmean(latencies),
            "min": latencies[0],
            "max": latencies[-1],
        },
        "wall_s": wall,
        "throughput_rps": n / wall,
    }
    if save_dir is not None:
        summary["requests_detail"] = results
    return summary


def run_benchmark(client: MONAILabelClient, args: argparse.Namespace) -> dict:
    info = client.info()
    models = sorted(info.get("models", {}))
    model = args.model or (models[0] if len(models) == 1 else None)
    if model not in models:
        raise Refused(404, f"--model must be one of {models}")
    files = Path(args.files).read_text().split("\n") if args.files else None
    files = [f for f in files if f] if files else None
    images = args.images.split(",") if args.images else [] if files else sorted(client.datastore().get("objects", {}))
    if not images and not files:
        raise Refused(404, "no images: pass --images or --files, or add images to the server's studies folder")
    result = benchmark(
        client.get_server_url(),
        model,
        images,
        args.n,
        args.concurrency,
        files,
        Path(args.save_dir) if args.save_dir else None,
    )
    result.update(
        {
            "url": client.get_server_url(),
            "model": model,
            "images": len(files or images),
            "model_config": info["models"][model],
            "host": platform.node(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
    )
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return result


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default="http://127.0.0.1:8000")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("info")
    q = sub.add_parser("infer")
    q.add_argument("model")
    q.add_argument("--image", default="")
    q.add_argument("--file")
    q.add_argument("--out", required=True)
    q = sub.add_parser("save-label")
    q.add_argument("image")
    q.add_argument("label")
    q.add_argument("--tag", default="final")
    sub.add_parser("score").add_argument("method")
    sub.add_parser("next-sample").add_argument("strategy")
    q = sub.add_parser("train")
    q.add_argument("model")
    q.add_argument("--params", default="{}", help="JSON object of training settings")
    sub.add_parser("train-status").add_argument(
        "--wait", type=float, default=0.0, help="seconds to wait for the task to finish"
    )
    q = sub.add_parser("benchmark")
    q.add_argument("--model", help="model name (default: the server's only model)")
    q.add_argument("--images", help="comma-separated datastore image ids (default: the whole datastore)")
    q.add_argument("--files", help="a text file listing image files (one a line) to upload instead")
    q.add_argument("--save-dir", help="folder that keeps every answer's mask (<request>.png), listed per request")
    q.add_argument("--n", type=int, default=100)
    q.add_argument("--concurrency", type=int, default=4)
    q.add_argument("--out", help="JSON file for the result")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    # a folder of our own for the answers: with the default (/tmp) a server on the same machine, which names its
    # result /tmp/tmpXXXX.png too and deletes it after answering, can delete our copy under the same name
    with tempfile.TemporaryDirectory() as tmp:
        return run_command(args, MONAILabelClient(args.url, tmpdir=tmp))


def run_command(args: argparse.Namespace, client: MONAILabelClient) -> int:
    commands = {
        "info": lambda: client.info(),
        "infer": lambda: infer(client, args.model, Path(args.out), args.image, args.file),
        "save-label": lambda: client.save_label(args.image, args.label, tag=args.tag),
        "score": lambda: score(client, args.method),
        "next-sample": lambda: client.next_sample(args.strategy, {}),
        "train": lambda: client.train_start(args.model, json.loads(args.params)),
        "train-status": lambda: wait_for_training(client, args.wait) if args.wait else client.train_status(),
        "benchmark": lambda: run_benchmark(client, args),
    }
    try:
        answer = {"status": 200, "answer": commands[args.command]()}
    except MONAILabelClientException as e:
        refused = _refusal(e)
        answer = {"status": refused.status, "detail": refused.detail}
    except Refused as e:
        answer = {"status": e.status, "detail": e.detail}
    except OSError as e:  # no server at --url (yet), or a file that cannot be read or written
        answer = {"status": 0, "detail": f"{args.url}: {e}"}
    print(json.dumps(answer))
    failed_requests = args.command == "benchmark" and answer["status"] == 200 and answer["answer"]["failed"]
    return 0 if answer["status"] == 200 and not failed_requests else 1


if __name__ == "__main__":
    sys.exit(main())
