#!/usr/bin/env python
"""Load test of a running MONAI Label server: N /infer requests, C at a time; median and p95 latency to JSON.

    python scripts/benchmark_monailabel.py --url http://127.0.0.1:8000 --out outputs/monailabel_benchmark.json
        [--model ultrasound_mgcc_segmentation] [--images benign_001,benign_002] [--n 100] [--concurrency 4]

Without --images, every image of the server's datastore is used (round robin). Exit status 1 if any
request failed. Start the server first with `mgcc label serve --studies DIR`.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

from mgcc.label import LabelClient, benchmark_infer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--model", default=None, help="model name (default: the server's only model)")
    parser.add_argument("--images", default=None, help="comma-separated datastore image ids")
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--out", default="outputs/monailabel_benchmark.json")
    args = parser.parse_args(argv)

    client = LabelClient(args.url)
    info = client.info()
    models = sorted(info.get("models", {}))
    model = args.model or (models[0] if len(models) == 1 else None)
    if model not in models:
        parser.error(f"--model must be one of {models}")
    if args.images:
        images = args.images.split(",")
    else:
        r = client.request("GET", "/datastore/", {"output": "all"})
        images = sorted(json.loads(r.body)["objects"]) if r.status == 200 else []
    if not images:
        parser.error("no images: pass --images or add images to the server's studies folder")

    result = benchmark_infer(args.url, model, images, n=args.n, concurrency=args.concurrency)
    result.update({
        "url": args.url, "model": model, "images": len(images), "model_config": info["models"][model],
        "host": platform.node(), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    })
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    lat = result["latency_s"]
    print(f"{result['succeeded']}/{result['requests']} ok, concurrency {result['concurrency']}: "
          f"median {lat['median']:.3f} s, p95 {lat['p95']:.3f} s, {result['throughput_rps']:.1f} req/s -> {out}")
    return 0 if result["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
