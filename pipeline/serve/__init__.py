"""Serving core: what the TorchServe handler runs, and the offline tools build on. Request options
and limits, style/strength controls, the one model loader (every form; `.onnx` through ONNX Runtime,
imported only for one, so never bundled), precision, (tiled) inference and colour preservation.

Exactly the modules the handler imports (with `pipeline.common` and `pipeline.model`) are bundled into
every `.mar` (`pipeline.export.archive.serving_modules`): torch, Pillow, numpy and the standard library
only, never training, data, Lightning, webdataset or torchvision.
"""
