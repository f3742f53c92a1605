"""An exported `.onnx` generator run by ONNX Runtime behind the same call as the torch forms:
(B, 3, H, W) float tensor in [0, 1] → same shape in [0, 1], on the input's device. Optional: needs
onnxruntime (and onnx to read the weights for tiled inference), the `onnx` extra; imported only when
`pipeline.serve.model_io.load_model` is given an .onnx, so TorchServe's `.mar` does not bundle it.

Providers: CUDA when the model is loaded for a CUDA device and the installed onnxruntime has that
provider (the `onnxruntime-gpu` build), else the CPU; the tensors cross through host memory either way.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

ONNX_METADATA_KEY = "instyle"


class OnnxGenerator:
    """Callable like the generator; also carries its weights (`weights`, from the graph's initializers,
    whose names are the generator's state-dict keys), from which the loader rebuilds the eager
    generator for tiled inference."""

    training = False

    def __init__(self, path: str | Path, threads: int | None = None, device: str | torch.device = "cpu"):
        try:
            import onnx
            import onnxruntime as ort
            from onnx import numpy_helper
        except ImportError as e:
            raise ValueError(f"{path}: running .onnx models needs onnxruntime and onnx: `pip install 'instyle[onnx]'` "
                             f"({e})") from None
        model = onnx.load(str(path))
        props = {p.key: p.value for p in model.metadata_props}
        self.metadata_json = props.get(ONNX_METADATA_KEY, "")
        self.weights = {i.name: torch.from_numpy(numpy_helper.to_array(i).copy()) for i in model.graph.initializer
                                if "." in i.name}  # parameters; constants the exporter made have other names
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or (os.cpu_count() or 1)
        providers = ["CPUExecutionProvider"]
        if torch.device(device).type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": torch.device(device).index or 0}))
        self.session = ort.InferenceSession(model.SerializeToString(), options, providers=providers)
        self.input_names = [i.name for i in self.session.get_inputs()]  # image[, style[, strength]]

    def __call__(self, x: torch.Tensor, *conditioning: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) → same; a multi-style / strength model also takes style weights (B, N) and strengths (B,)."""
        inputs = (x, *conditioning)
        if len(inputs) != len(self.input_names):
            raise ValueError(f"this ONNX model takes {len(self.input_names)} input(s) ({', '.join(self.input_names)}), "
                             f"got {len(inputs)}")
        feeds = {name: t.detach().float().cpu().contiguous().numpy() for name, t in zip(self.input_names, inputs)}
        (y,) = self.session.run(None, feeds)
        return torch.from_numpy(y).to(x.device)  # where the caller's tensors are, as the torch forms answer

    def eval(self) -> "OnnxGenerator":
        return self
