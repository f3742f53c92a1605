"""Serving core: what the TorchServe handler runs, and the offline tools build on.

- `options`, `limits`: a request's options and the limits they are checked against; `controls`: the
  style (or mix) and strength;
- `model_io`: the one model loader (`.pt2`, `.pt`, `.ckpt`, `.safetensors`, a packaged name, and `.onnx`
  through `onnx_runtime`, imported only for one, so never bundled); `precision`: fp32, bf16 or fp16;
- `inference`: decode → model → encode, in batches; `tiling`: very large images in bounded memory;
  `color`: colour preservation.

Exactly the modules the handler imports (with `pipeline.common` and `pipeline.model`) are bundled into
every `.mar` (`pipeline.export.archive.serving_modules`): torch, Pillow, numpy and the standard library
only, never training, data, Lightning, webdataset or torchvision.
"""
