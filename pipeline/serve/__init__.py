"""Serving core: what the TorchServe handler runs, and the offline tools build on. Request options
and limits, style/strength controls, model loading (`.pt2`, `.pt`, `.ckpt`), precision, (tiled)
inference and colour preservation.

Exactly the modules the handler imports (with `pipeline.common` and `pipeline.model`) are bundled into
every `.mar` (`pipeline.export.archive.serving_modules`): torch, Pillow, numpy and the standard library
only, never training, data, Lightning, webdataset or torchvision.
"""
