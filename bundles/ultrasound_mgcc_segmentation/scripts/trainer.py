# Copyright (c) MGCC-MONAI contributors. Licensed under the Apache License, Version 2.0.
"""Semi-supervised trainers on MONAI's ``SupervisedTrainer`` (ignite engine).

``SemiSupervisedTrainer`` implements MGCC cross-consistency (and, with other network settings, the
single-level CCT baseline and supervised-only training); ``MeanTeacherTrainer`` the mean-teacher baseline.
Each iteration consumes one batch of ``scripts.data.SemiSupervisedBatches``:
``{"image": labeled images, "label": masks, "unlabeled": unlabeled images}``.
"""

from __future__ import annotations

import math
import os
import random
import tempfile
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from ignite.handlers.checkpoint import BaseSaveHandler
from monai.data import MetaTensor
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.handlers import CheckpointSaver
from monai.utils import CommonKeys as Keys
from torch.optim.swa_utils import AveragedModel

from .data import IterationSampler

__all__ = [
    "iterations_to_epochs",
    "SigmoidRampUp",
    "SemiSupervisedTrainer",
    "MeanTeacherTrainer",
    "RandomStates",
    "KeyMetricState",
    "AtomicCheckpointSaver",
]


def iterations_to_epochs(max_iterations: int, val_interval: int) -> int:
    """Engine epochs of ``val_interval`` iterations that make exactly ``max_iterations`` iterations."""
    if max_iterations < 1 or val_interval < 1 or max_iterations % val_interval:
        raise ValueError(
            f"max_iterations ({max_iterations}) must be a positive multiple of val_interval ({val_interval})."
        )
    return max_iterations // val_interval


class SigmoidRampUp:
    """Consistency weight ``weight * exp(-5 * (1 - min(t, T) / T) ** 2)`` at iteration ``t``
    (Laine & Aila, arXiv 1610.02242); ``T = 0`` gives the full weight from the start."""

    def __init__(self, weight: float, rampup_iterations: int) -> None:
        self.weight = weight
        self.rampup_iterations = rampup_iterations

    def __call__(self, iteration: int) -> float:
        if self.rampup_iterations <= 0:
            return self.weight
        phase = 1.0 - min(iteration, self.rampup_iterations) / self.rampup_iterations
        return self.weight * math.exp(-5.0 * phase * phase)


class SemiSupervisedTrainer(SupervisedTrainer):
    """Supervised loss on the labeled samples for every decoder output (averaged), plus
    ``consistency_weight(iteration) * consistency`` on the unlabeled samples, where consistency is the mean
    over auxiliary outputs of ``MSE(sigmoid(main), sigmoid(aux_k))``.

    A network that returns a single tensor in training (``train_aux_decoders=False``) trains supervised-only
    (consistency 0). Accepts every ``SupervisedTrainer`` argument; ``loss_function`` is the supervised loss.

    Args:
        consistency_weight: callable mapping the 0-based iteration to the consistency weight
            (e.g. ``SigmoidRampUp``).

    Mixed precision and the memory format belong to the ``inferer`` (``scripts.inferer.AutocastInferer``, on CPU
    and CUDA); ``amp`` (a ``SupervisedTrainer`` argument) only switches on gradient scaling, which float16 needs
    (``AutocastInferer.needs_grad_scaler``). Losses are computed in float32.

    ``compile=True`` (a ``SupervisedTrainer`` argument) runs the training forward through ``torch.compile``:
    the same computation with fused kernels; the first iteration pays the compilation.

    ``engine.state.output`` holds ``image``, ``label``, ``pred`` (main logits of the labeled samples), and the
    scalars ``loss``, ``supervised_loss``, ``consistency_loss``, ``consistency_weight``, ``lr`` (the learning rate
    of this iteration's optimizer step).
    """

    def __init__(self, *args, consistency_weight: Callable[[int], float], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.consistency_weight = consistency_weight
        sampler = getattr(self.data_loader, "sampler", None)
        if isinstance(sampler, IterationSampler):
            sampler.follow(self)

    def consistency(self, unlabeled: torch.Tensor, outputs: Sequence[torch.Tensor], n_labeled: int) -> torch.Tensor:
        """Cross-consistency between the main output and each auxiliary output on the unlabeled samples."""
        main = torch.sigmoid(outputs[0][n_labeled:])
        return torch.stack([F.mse_loss(main, torch.sigmoid(aux[n_labeled:])) for aux in outputs[1:]]).mean()

    def _iteration(self, engine: SemiSupervisedTrainer, batchdata: dict[str, torch.Tensor]) -> dict:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        device, nb = engine.state.device, engine.non_blocking
        images = batchdata[Keys.IMAGE].to(device, non_blocking=nb, **engine.to_kwargs)
        labels = batchdata[Keys.LABEL].to(device, non_blocking=nb, **engine.to_kwargs)
        n_labeled = images.shape[0]
        unlabeled = batchdata.get("unlabeled")
        if unlabeled is not None:
            unlabeled = unlabeled.to(device, non_blocking=nb, **engine.to_kwargs)
            inputs = torch.cat((images, unlabeled))
        else:
            inputs = images
        if engine.compile and isinstance(inputs, MetaTensor):
            inputs = inputs.as_tensor()  # compiled graphs take plain tensors
        engine.state.output = {Keys.IMAGE: images, Keys.LABEL: labels}
        weight = float(self.consistency_weight(engine.state.iteration - 1))
        lr = engine.optimizer.param_groups[0]["lr"]

        engine.network.train()
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        outputs = engine.inferer(inputs, engine.network)
        outputs = tuple(outputs) if isinstance(outputs, (tuple, list)) else (outputs,)
        engine.state.output[Keys.PRED] = outputs[0][:n_labeled]
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        supervised = torch.stack([engine.loss_function(out[:n_labeled], labels) for out in outputs]).mean()
        if unlabeled is not None:
            consistency = self.consistency(unlabeled, outputs, n_labeled)
        else:
            consistency = torch.zeros((), device=supervised.device)
        loss = supervised + weight * consistency
        engine.state.output.update(
            {
                Keys.LOSS: loss.detach(),
                "supervised_loss": supervised.detach(),
                "consistency_loss": consistency.detach(),
                "consistency_weight": weight,
                "lr": lr,
            }
        )
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        if engine.amp and engine.scaler is not None:
            engine.scaler.scale(loss).backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            engine.scaler.step(engine.optimizer)
            engine.scaler.update()
        else:
            loss.backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            engine.optimizer.step()
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output


class MeanTeacherTrainer(SemiSupervisedTrainer):
    """Mean teacher (Tarvainen & Valpola, NeurIPS 2017) as in the SSL4MIS 2D baseline: consistency is
    ``MSE(sigmoid(student(u)), sigmoid(teacher(u + noise)))`` with ``noise = clamp(0.1 * N(0, 1), -0.2, 0.2)``,
    and after each step the teacher's parameters become the exponential moving average of the student's,
    with decay ``min(1 - 1 / (iteration + 1), ema_decay)``. The student is the trained (and saved) network.

    The teacher (``self.teacher``) is PyTorch's ``AveragedModel`` of the student: a copy that is never optimised,
    whose parameters the update averages (its buffers, the batch-norm statistics, are its own).

    Args:
        ema_decay: the EMA decay ceiling (0.99).
    """

    def __init__(self, *args, ema_decay: float = 0.99, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.ema_decay = ema_decay
        self.teacher = AveragedModel(self._student(), avg_fn=self._ema).requires_grad_(False)
        self.add_event_handler(IterationEvents.MODEL_COMPLETED, self._update_teacher)

    def _ema(self, teacher: torch.Tensor, student: torch.Tensor, updates: torch.Tensor) -> torch.Tensor:
        """The teacher's new value after ``updates`` earlier updates (the first one copies the student)."""
        decay = min(1.0 - 1.0 / (int(updates) + 1), self.ema_decay)
        return teacher * decay + student * (1.0 - decay)

    def _student(self) -> torch.nn.Module:
        return getattr(self.network, "module", self.network)  # unwrap DistributedDataParallel

    def consistency(self, unlabeled: torch.Tensor, outputs: Sequence[torch.Tensor], n_labeled: int) -> torch.Tensor:
        noise = torch.clamp(torch.randn_like(unlabeled) * 0.1, -0.2, 0.2)
        self.teacher.train()
        with torch.no_grad():
            target = torch.sigmoid(self.inferer(unlabeled + noise, self.teacher))
        return F.mse_loss(torch.sigmoid(outputs[0][n_labeled:]), target)

    def _update_teacher(self, engine: MeanTeacherTrainer) -> None:
        self.teacher.update_parameters(self._student())


class RandomStates:
    """The torch / numpy / python global random states as a checkpointable object (for exact resume:
    the network's training perturbations draw from torch's global generator). Stored as tensors and plain
    Python values so the checkpoint loads with ``torch.load(..., weights_only=True)``."""

    def state_dict(self) -> dict:
        _, keys, pos, has_gauss, cached = np.random.get_state()
        version, internal, gauss_next = random.getstate()
        return {
            "torch": torch.get_rng_state(),
            "numpy": {
                "keys": torch.from_numpy(keys.astype(np.int64)),
                "pos": pos,
                "has_gauss": has_gauss,
                "cached": cached,
            },
            "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
        }

    def load_state_dict(self, state: dict) -> None:
        torch.set_rng_state(state["torch"])
        npy = state["numpy"]
        np.random.set_state(
            ("MT19937", npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"], npy["cached"])
        )
        py = state["python"]
        random.setstate((py["version"], tuple(py["internal"]), py["gauss_next"]))


class KeyMetricState:
    """Checkpointable view of the best validation result: a ``monai.handlers.CheckpointSaver``'s best-key-metric
    record, so a resumed run only replaces ``model.pt`` with a better model than the best one before the
    interruption (the saver can restore this record, ``CheckpointSaver.load_state_dict``, but only exposes it
    through a private field), and the evaluator's ``best_metric`` and ``best_metric_epoch``, so its log keeps
    naming the best result of the whole run."""

    def __init__(self, saver, evaluator=None) -> None:
        self.saver, self.evaluator = saver, evaluator

    def state_dict(self) -> dict:
        state = {"saver": self.saver._key_metric_checkpoint.state_dict()}
        if self.evaluator is not None:
            state |= {k: getattr(self.evaluator.state, k) for k in ("best_metric", "best_metric_epoch")}
        return state

    def load_state_dict(self, state: dict) -> None:
        if "saver" not in state:  # written before the evaluator's record was kept: the saver's alone
            self.saver.load_state_dict(state)
            return
        self.saver.load_state_dict(state["saver"])
        if self.evaluator is not None and "best_metric" in state:
            self.evaluator.state.best_metric = state["best_metric"]
            self.evaluator.state.best_metric_epoch = state["best_metric_epoch"]


class _AtomicSave(BaseSaveHandler):
    """Save handler writing each checkpoint to a temporary file beside it (``.<name>.<random>.part``) and renaming
    it over the target, so the target is always a complete checkpoint, the old one or the new one. Wraps MONAI's
    disk saver (its folder and fixed file name); a fixed name is never removed before the save that replaces it."""

    def __init__(self, disk_saver) -> None:
        self.dirname, self.filename, self.disk_saver = disk_saver.dirname, disk_saver.filename, disk_saver

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        target = os.path.join(self.dirname, self.filename or filename)
        fd, part = tempfile.mkstemp(dir=self.dirname, prefix=f".{os.path.basename(target)}.", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(part, 0o644)  # mkstemp creates it private
            os.replace(part, target)
        except BaseException:
            os.unlink(part)
            raise

    def remove(self, filename: str) -> None:
        if self.filename is None:  # a fixed name is replaced by the next save: removing it first would leave none
            self.disk_saver.remove(filename)


class AtomicCheckpointSaver(CheckpointSaver):
    """``monai.handlers.CheckpointSaver`` whose files are replaced atomically: MONAI writes in place (and ignite
    deletes the previous best ``model.pt`` before writing the next), so a run killed while saving left a truncated
    ``model.pt`` that a server (MONAI Label) then failed to load. Same arguments as ``CheckpointSaver``."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        for checkpoint in (self._final_checkpoint, self._key_metric_checkpoint, self._interval_checkpoint):
            if checkpoint is not None:
                checkpoint.save_handler = _AtomicSave(checkpoint.save_handler)
