#!/usr/bin/env python
"""Does a class-conditional LDM generate the class it is asked for?

A small CNN classifier (MONAI ``Classifier``) is trained on the real train-split images of the prepared dataset
(``training`` + ``unlabeled``, the images the generator saw), checked on the real ``validation`` images, and then
applied to the conditional samples. For each requested class the script reports how often the classifier agrees
with the class the sample was generated for. The classifier's accuracy on held-out real images is the ceiling to
read that agreement against; a generator that ignores its class scores a balanced agreement of 1 / classes.

Images go through the LDM bundle's own preprocessing (``preprocessing_transforms`` at the samples' size).

    python scripts/check_conditional_generation.py --dataset <prepared dataset> --samples <conditional sample dir> \
        --out results/conditional_check [--classes benign malignant] [--epochs 40]

writes ``<out>.json`` and ``<out>.md``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from monai.bundle import ConfigParser
from monai.networks.nets import Classifier
from monai.transforms import Compose
from monai.utils import set_determinism

from mgcc.bundles import import_bundle_scripts

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "ultrasound_ldm_generation"


def real_images(
    dataset: Path, sections: list[str], classes: list[str], size: list[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images of the datalist ``sections`` whose class is in ``classes``, through the LDM bundle's preprocessing."""
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "train_autoencoder.json"))
    parser["spatial_size"] = size
    transform = Compose(parser.get_parsed_content("preprocessing_transforms"))
    datalist = json.loads((dataset / "datalist.json").read_text())
    items = [
        dict(e, image=str(dataset / e["image"]))
        for s in sections
        for e in datalist.get(s, [])
        if e.get("class") in classes
    ]
    if not items:
        raise SystemExit(f"{dataset / 'datalist.json'}: no {sections} images of the classes {classes}")
    images = torch.stack([torch.as_tensor(transform(item)["image"]) for item in items]).float()
    labels = torch.tensor([classes.index(e["class"]) for e in items])
    return images, labels


def train_classifier(
    images: torch.Tensor, labels: torch.Tensor, n_classes: int, epochs: int, seed: int
) -> torch.nn.Module:
    """A small CNN, class-balanced cross-entropy, horizontal flips; Adam for ``epochs`` passes."""
    set_determinism(seed)
    size = tuple(images.shape[1:])
    net = Classifier(in_shape=size, classes=n_classes, channels=(16, 32, 64, 128), strides=(2, 2, 2, 2), dropout=0.2)
    counts = torch.bincount(labels, minlength=n_classes).float()
    loss_fn = torch.nn.CrossEntropyLoss(weight=counts.sum() / (n_classes * counts.clamp(min=1)))
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3, weight_decay=1e-4)
    generator = torch.Generator().manual_seed(seed)
    net.train()
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=generator)
        for batch in order.split(32):
            x = images[batch]
            flip = torch.rand(len(batch), generator=generator) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            optimizer.zero_grad()
            loss_fn(net(x), labels[batch]).backward()
            optimizer.step()
    return net.eval()


@torch.no_grad()
def predict(net: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    return torch.cat([net(batch).argmax(1) for batch in images.split(64)])


def agreement(predicted: torch.Tensor, wanted: torch.Tensor, classes: list[str]) -> dict:
    """Per class: how many images of that (true or requested) class the classifier assigns to it."""
    per_class = {}
    for index, name in enumerate(classes):
        chosen = wanted == index
        if chosen.any():
            per_class[name] = {"n": int(chosen.sum()), "agreement": float((predicted[chosen] == index).float().mean())}
    balanced = float(np.mean([v["agreement"] for v in per_class.values()]))
    return {"overall": float((predicted == wanted).float().mean()), "balanced": balanced, "per_class": per_class}


def markdown(report: dict) -> str:
    lines = [
        "# Conditional generation check",
        "",
        f"Classifier: MONAI `Classifier` trained on {report['train_images']} real train-split images "
        f"({', '.join(report['classes'])}), {report['epochs']} epochs, seed {report['seed']}.",
        f"Samples: `{report['samples']}` ({report['num_samples']} images).",
        "",
        "| images | n | classifier agrees (overall) | balanced | " + " | ".join(report["classes"]) + " |",
        "|---|---|---|---|" + "---|" * len(report["classes"]),
    ]
    for name in ("real_validation", "conditional_samples"):
        r = report[name]
        cells = [
            f"{r['per_class'][c]['agreement']:.2f} (n={r['per_class'][c]['n']})" if c in r["per_class"] else "-"
            for c in report["classes"]
        ]
        n = sum(v["n"] for v in r["per_class"].values())
        lines.append(
            f"| {name.replace('_', ' ')} | {n} | {r['overall']:.3f} | {r['balanced']:.3f} | " + " | ".join(cells) + " |"
        )
    lines += ["", f"Chance (balanced): {1 / len(report['classes']):.2f}.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, type=Path, help="prepared dataset folder (with datalist.json)")
    parser.add_argument("--samples", required=True, type=Path, help="sample folder of a class-conditional model")
    parser.add_argument("--out", required=True, help="output path without suffix")
    parser.add_argument("--classes", nargs="+", default=["benign", "malignant"])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    samples, records = import_bundle_scripts(BUNDLE).quality.load_samples(str(args.samples))
    unknown = sorted({r.get("class") for r in records} - set(args.classes), key=str)
    if unknown:
        raise SystemExit(
            f"{args.samples / 'manifest.json'}: samples of classes {unknown} are not among {args.classes} "
            "(is this a class-conditional model's sample folder?)"
        )
    wanted = torch.tensor([args.classes.index(r["class"]) for r in records])
    size = list(samples.shape[2:])

    train_x, train_y = real_images(args.dataset, ["training", "unlabeled"], args.classes, size)
    val_x, val_y = real_images(args.dataset, ["validation"], args.classes, size)
    net = train_classifier(train_x, train_y, len(args.classes), args.epochs, args.seed)
    report = {
        "dataset": str(args.dataset),
        "samples": str(args.samples),
        "classes": args.classes,
        "epochs": args.epochs,
        "seed": args.seed,
        "train_images": len(train_x),
        "num_samples": len(samples),
        "size": size,
        "real_validation": agreement(predict(net, val_x), val_y, args.classes),
        "conditional_samples": agreement(predict(net, samples), wanted, args.classes),
    }
    out_json, out_md = Path(f"{args.out}.json"), Path(f"{args.out}.md")
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(report, indent=2))
    out_md.write_text(markdown(report))
    print(markdown(report))
    print(f"[check] wrote {out_json} and {out_md}")


if __name__ == "__main__":
    main()
