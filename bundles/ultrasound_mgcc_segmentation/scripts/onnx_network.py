# Copyright (c) MGCC-MONAI contributors. Licensed under the Apache License, Version 2.0.
"""The exported network (``models/model.onnx``) run by ONNX Runtime, as a module the bundle's inferer can call."""

from __future__ import annotations

import os

import torch

__all__ = ["OnnxRuntimeNetwork"]


class OnnxRuntimeNetwork(torch.nn.Module):
    """``forward(image)`` runs an ONNX model with ONNX Runtime on CPU and returns a float32 tensor on the input's
    device.

    Export the trained network first (``python -m monai.bundle onnx_export network_def ...``, see the bundle's
    README); ``configs/inference_onnx.json`` puts this module in place of ``network``.

    Args:
        path: the ``.onnx`` file.
        num_threads: ONNX Runtime's intra-op threads (``None``: PyTorch's ``torch.get_num_threads()``, which
            ``num_threads`` of the bundle sets too).
    """

    def __init__(self, path: str, num_threads: int | None = None) -> None:
        super().__init__()
        import onnxruntime  # optional: only this inference path needs it

        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"{path}: no exported ONNX model (export it with `python -m monai.bundle onnx_export`)"
            )
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = num_threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise ValueError(f"{path}: expected a model with one input, found {[i.name for i in inputs]}")
        self.input_name, self.input_shape = inputs[0].name, inputs[0].shape
        self.path = path

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        array = image.detach().cpu().float().contiguous().numpy()
        expected = [d for d in self.input_shape[1:] if isinstance(d, int)]
        if len(expected) == len(self.input_shape) - 1 and list(array.shape[1:]) != expected:
            raise ValueError(
                f"{self.path}: exported for inputs of shape {self.input_shape}, got {list(array.shape)}; "
                "export again with this spatial_size, or run inference with the one it was exported for"
            )
        (output,) = self.session.run(None, {self.input_name: array})
        return torch.from_numpy(output).to(image.device)
