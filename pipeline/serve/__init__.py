"""Serving stage: pure image processing, model loading and (tiled) inference, shared by the TorchServe
handler and the offline `stylize` command.

This package is bundled whole into every `.mar`: it imports torch, Pillow, numpy and the standard
library only (never training, data, Lightning, webdataset or torchvision), plus `pipeline.model`
lazily when a `.ckpt` is loaded outside TorchServe.
"""
