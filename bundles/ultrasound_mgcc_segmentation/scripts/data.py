# Copyright (c) MGCC-MONAI contributors. Licensed under the Apache License, Version 2.0.
"""Data sources of the bundle: datalist sections, synthetic sample folders, and the iteration-indexed
semi-supervised batch stream.

The training stream is a map-style dataset whose item ``i`` is the complete batch of iteration ``i``
(labeled + unlabeled samples). Which samples and which augmentation draws go into it depend only on
``(seed, iteration, rank)``, so a resumed run (``IterationSampler`` starts at the restored iteration) sees
exactly the batches the uninterrupted run would have seen, and no randomness is shared with the network.
"""

from __future__ import annotations

import glob
import itertools
import json
import os
import warnings
import zipfile
from collections.abc import Iterator

import numpy as np
from ignite.engine import Engine
from monai.data import list_data_collate, load_decathlon_datalist
from monai.transforms import Randomizable
from torch.utils.data import Dataset, Sampler

from .image_contract import IMAGE_SUFFIXES, image_problem, is_nifti

__all__ = [
    "datalist_section",
    "synthetic_datalist",
    "unlabeled_datalist",
    "inference_datalist",
    "mask_name_formatter",
    "mask_name",
    "latest_checkpoint",
    "SemiSupervisedBatches",
    "IterationSampler",
]


def datalist_section(datalist: str, section: str, allow_empty: bool = False) -> list[dict]:
    """Entries of one section of a prepared ``datalist.json`` with paths made absolute."""
    if not os.path.isfile(datalist):
        raise FileNotFoundError(f"datalist not found: {datalist} (run `mgcc prepare` or pass --datalist).")
    with open(datalist) as f:
        sections = json.load(f)
    if section not in sections:
        raise KeyError(f"{datalist}: no section '{section}' (found {sorted(sections)}).")
    if not sections[section]:
        if allow_empty:
            return []
        raise ValueError(f"{datalist}: section '{section}' is empty.")
    data = load_decathlon_datalist(datalist, is_segmentation=True, data_list_key=section)
    missing = [d["image"] for d in data if not os.path.isfile(d["image"])]
    if missing:
        raise FileNotFoundError(f"{datalist}: {len(missing)} image(s) of '{section}' missing, e.g. {missing[0]}")
    return data


def synthetic_datalist(synthetic_dir: str, labeled: bool = False) -> list[dict]:
    """Synthetic images listed by ``<synthetic_dir>/manifest.json`` (LDM bundle output); ``labeled``: with the mask
    each was generated from (a mask-conditioned generator's ``label``), as labeled pairs."""
    manifest = os.path.join(synthetic_dir, "manifest.json")
    if not os.path.isfile(manifest):
        raise FileNotFoundError(f"synthetic samples: {manifest} not found (set synthetic_dir to an LDM sample folder).")
    with open(manifest) as f:
        samples = json.load(f).get("samples")
    if not samples:
        raise ValueError(f"{manifest}: no 'samples' listed.")
    data = [{"image": os.path.join(synthetic_dir, s["file"]), "class": s.get("class", "synthetic")} for s in samples]
    if labeled:
        unlabeled = [s["file"] for s in samples if not s.get("label")]
        if unlabeled:
            raise ValueError(
                f"{manifest}: {len(unlabeled)} sample(s) have no mask, e.g. {unlabeled[0]} (labeled "
                "synthetic pairs need a mask-conditioned generator: mask_conditional=true)"
            )
        for item, s in zip(data, samples, strict=True):
            item["label"] = os.path.join(synthetic_dir, s["label"])
    missing = [path for d in data for key, path in d.items() if key in ("image", "label") and not os.path.isfile(path)]
    if missing:
        raise FileNotFoundError(f"{manifest}: {len(missing)} listed file(s) missing, e.g. {missing[0]}")
    return data


def image_stem(path: str) -> str:
    """The file name without its image suffix (``.nii.gz`` counted as one): the name outputs are written under."""
    name = os.path.basename(str(path))
    return name[: -len(".nii.gz")] if name.lower().endswith(".nii.gz") else os.path.splitext(name)[0]


def mask_name(path: str, suffix: str = "_seg.png") -> str:
    """The file name of an input's mask: ``image_stem`` + ``suffix``, whose extension becomes ``.nii.gz`` for a NIfTI
    input (NIfTI in gives NIfTI out: ``X.NII.GZ`` -> ``X_seg.nii.gz``; ``Y.PNG`` -> ``Y_seg.png``), the name
    ``inference_datalist`` checks for clashes and ``predictions.json`` records."""
    return image_stem(path) + (image_stem(suffix) + ".nii.gz" if is_nifti(path) else suffix)


def mask_name_formatter(metadict: dict, saver: object) -> dict:
    """``SaveImaged``'s ``output_name_formatter``: a mask is named after ``image_stem`` of its input (MONAI's own
    naming strips only a lower-case ``.gz``), as ``mask_name`` says. MONAI removes one extension from ``subject``:
    the stem gets a stand-in."""
    source = str((metadict or {}).get("filename_or_obj", getattr(saver, "_data_index", 0)))
    stand_in = os.path.join(os.path.dirname(source), image_stem(source) + ".input")
    return {"subject": stand_in, "idx": (metadict or {}).get("patch_index")}


def unlabeled_datalist(source: str, datalist: str, synthetic_dir: str | None) -> list[dict]:
    """The unlabeled set: ``"real"`` (datalist ``unlabeled`` section), ``"synthetic"`` or ``"both"``."""
    if source not in ("real", "synthetic", "both"):
        raise ValueError(f"unlabeled_source must be 'real', 'synthetic' or 'both', got {source!r}.")
    data = datalist_section(datalist, "unlabeled") if source in ("real", "both") else []
    if source in ("synthetic", "both"):
        if not synthetic_dir:
            raise ValueError(f"unlabeled_source={source!r} needs synthetic_dir (a folder with manifest.json).")
        data += synthetic_datalist(synthetic_dir)
    return data


class InputError(SystemExit):
    """Bad input to a bundle command (a folder, a file): ``python -m monai.bundle run`` stops with this one line
    (exit code 1) instead of a traceback through the config parser, before any model runs."""

    def __init__(self, message: str):
        super().__init__(f"error: {message}")


def inference_datalist(
    input_dir: str | None, datalist: str | None = None, section: str = "test", output_dir: str | None = None
) -> list[dict]:
    """Images to segment: a datalist section if ``datalist`` is given, else every image file of ``input_dir``
    (PNG, JPEG, BMP, NIfTI; sorted by name; other files are skipped with a warning that lists them; a broken
    link is refused, counted and named).

    Every input is checked by the image contract (``image_contract.check_image``: a truncated file, a 32-bit float
    image, a NIfTI volume or one of NaN or normalised values ...): the first refused one stops the run with its
    one line, before the model runs. With ``output_dir``, refuses what would lose or mix up results: an output
    folder that is the input folder (a rerun would segment the masks), and two inputs that would write the same
    mask file (``mask_name``)."""
    if datalist:
        files = [d["image"] for d in datalist_section(datalist, section)]
    else:
        if not input_dir or not os.path.isdir(input_dir):
            raise InputError(f"input_dir is not a folder: {input_dir}")
        entries = glob.glob(os.path.join(input_dir, "*"))
        broken = sorted(f for f in entries if os.path.islink(f) and not os.path.exists(f))
        if broken:
            raise InputError(
                f"{len(broken)} broken link(s) in input_dir {input_dir}, their images are missing: "
                + ", ".join(f"{os.path.basename(f)} -> {os.readlink(f)}" for f in broken[:5])
                + (" ..." if len(broken) > 5 else "")
            )
        found = sorted(f for f in entries if os.path.isfile(f))
        files = [f for f in found if f.lower().endswith(IMAGE_SUFFIXES)]
        skipped = [os.path.basename(f) for f in found if not f.lower().endswith(IMAGE_SUFFIXES)]
        if skipped:
            warnings.warn(
                f"{input_dir}: skipped {len(skipped)} file(s) that are not PNG, JPEG, BMP or NIfTI images: "
                f"{', '.join(skipped[:5])}{' ...' if len(skipped) > 5 else ''}",
                stacklevel=2,
            )
        if not files:
            folders = sum(os.path.isdir(f) for f in glob.glob(os.path.join(input_dir, "*")))
            raise InputError(
                f"no PNG, JPEG, BMP or NIfTI images in input_dir {input_dir}"
                + (f" (it holds {folders} folder(s): images are not searched in subfolders)" if folders else "")
            )
    for f in files:
        problem = image_problem(f)
        if problem:
            raise InputError(problem)
    if output_dir is not None:
        if os.path.exists(output_dir) and not os.path.isdir(output_dir):
            raise InputError(f"output_dir {output_dir} is a file, not a folder")
        if input_dir and not datalist and os.path.realpath(output_dir) == os.path.realpath(input_dir):
            raise InputError(
                f"output_dir is the input folder {input_dir}: a rerun would segment the masks; "
                "choose another output_dir"
            )
        writes: dict[str, str] = {}
        for f in files:
            name = mask_name(f)
            if name in writes:
                raise InputError(
                    f"{writes[name]} and {f} would both be written as {name} in {output_dir}; rename one of them"
                )
            writes[name] = f
    return [{"image": f} for f in files]


def latest_checkpoint(ckpt_dir: str, prefix: str = "checkpoint_epoch=") -> str:
    """Path of the newest complete periodic training checkpoint ``<ckpt_dir>/checkpoint_epoch=<n>.pt``.

    MONAI's ``CheckpointSaver`` writes in place, so a run killed while saving leaves a truncated file: it is
    skipped (with a warning) for the one before it, which the saver keeps (``n_saved`` 2)."""
    found = glob.glob(os.path.join(ckpt_dir, f"{prefix}*.pt"))
    found.sort(key=lambda p: int(os.path.basename(p)[len(prefix) : -len(".pt")]), reverse=True)
    for path in found:
        if zipfile.is_zipfile(path):  # torch.save writes a zip archive; one cut short lacks its end record
            return path
        warnings.warn(f"{path}: incomplete checkpoint (the run was stopped while saving it), skipped", stacklevel=2)
    incomplete = f" ({len(found)} incomplete)" if found else ""
    raise FileNotFoundError(f"resume requested but no {prefix}<n>.pt checkpoint in {ckpt_dir}{incomplete}")


class SemiSupervisedBatches(Dataset):
    """Item ``i`` = the training batch of iteration ``i``.

    Labeled samples are drawn without replacement from a fresh seeded permutation per pass over the
    labeled set (same for the unlabeled set); each sample's random transforms are re-seeded from
    ``(seed, stream, position)``. With ``world_size > 1`` (DistributedDataParallel) each rank draws a
    disjoint share of the positions.

    Args:
        labeled: dataset of ``{"image", "label"}`` samples (transforms included, e.g. a ``CacheDataset``).
        labeled_batch_size: labeled samples per iteration (per rank).
        unlabeled: dataset of ``{"image"}`` samples, or ``None`` for supervised-only training.
        unlabeled_batch_size: unlabeled samples per iteration (per rank); must be 0 iff ``unlabeled`` is None.
        seed: base seed of the sample order and the augmentation draws.
        rank, world_size: this process's share in distributed training.

    Returns per item ``{"image": (Bl,C,H,W), "label": (Bl,1,H,W), "unlabeled": (Bu,C,H,W)}`` (the last key
    only with unlabeled data).
    """

    def __init__(
        self,
        labeled: Dataset,
        labeled_batch_size: int,
        unlabeled: Dataset | None = None,
        unlabeled_batch_size: int = 0,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if (unlabeled is None) != (unlabeled_batch_size == 0):
            raise ValueError("give both an unlabeled dataset and unlabeled_batch_size > 0, or neither.")
        if len(labeled) == 0 or (unlabeled is not None and len(unlabeled) == 0):
            raise ValueError("the labeled and unlabeled training sets must not be empty.")
        if labeled_batch_size < 1:
            raise ValueError("labeled_batch_size must be positive.")
        self.streams = [(labeled, labeled_batch_size)]
        if unlabeled is not None:
            self.streams.append((unlabeled, unlabeled_batch_size))
        self.seed = seed
        self.rank = rank
        self.world_size = world_size

    def _draw(self, stream: int, iteration: int) -> list[dict]:
        dataset, batch_size = self.streams[stream]
        n = len(dataset)
        first = (iteration * self.world_size + self.rank) * batch_size
        samples = []
        for position in range(first, first + batch_size):
            order = np.random.default_rng([self.seed, stream, position // n]).permutation(n)
            transform = getattr(dataset, "transform", None)
            if isinstance(transform, Randomizable):
                transform.set_random_state(
                    seed=int(np.random.SeedSequence([self.seed, stream, position]).generate_state(1)[0])
                )
            samples.append(dataset[int(order[position % n])])
        return samples

    def __getitem__(self, iteration: int) -> dict:
        batch = list_data_collate([{"image": s["image"], "label": s["label"]} for s in self._draw(0, iteration)])
        if len(self.streams) > 1:
            batch["unlabeled"] = list_data_collate([{"image": s["image"]} for s in self._draw(1, iteration)])["image"]
        return batch


class IterationSampler(Sampler[int]):
    """Endless iteration indices, starting at the iteration of the engine it follows (0 before training,
    the restored iteration after a ``CheckpointLoader`` resumed it). The start is read when ignite creates the
    data iterator, i.e. after all ``STARTED`` handlers ran."""

    def __init__(self) -> None:
        self.engine: Engine | None = None

    def follow(self, engine: Engine) -> None:
        self.engine = engine

    def __iter__(self) -> Iterator[int]:
        return itertools.count(0 if self.engine is None else self.engine.state.iteration)
