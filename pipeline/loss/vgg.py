"""Frozen VGG-16 feature extractor (conv1_1 .. relu4_3) for the perceptual loss.

Two weight flavours, each with its own preprocessing:
- `caffe` (default): the original Oxford weights Johnson et al. used; RGB in 0..255 minus the
  ImageNet mean, no std. Obtained and verified by `pipeline.loss.vgg_weights`.
- `torchvision`: `VGG16_Weights.IMAGENET1K_V1` (needs internet once); 0..1 normalized by the
  ImageNet mean/std.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torchvision.models import vgg16

from pipeline.loss import vgg_weights
from pipeline.model.layers import check_choice

# Output index (after the ReLU) of each named layer in torchvision's vgg16().features.
LAYERS = {"relu1_2": 3, "relu2_2": 8, "relu3_3": 15, "relu4_3": 22}
FLAVOURS = ("caffe", "torchvision")
_CAFFE_MEAN = (123.68, 116.779, 103.939)
_TV_MEAN, _TV_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class VGGFeatures(nn.Module):
    """Returns {layer name: activation} for the requested layers of an image batch in [0, 1]."""

    def __init__(self, layers: list[str], flavour: str = "caffe", weights_path: str | Path | None = None):
        super().__init__()
        check_choice("vgg flavour", flavour, FLAVOURS)
        for name in layers:
            check_choice("vgg layer", name, tuple(LAYERS))
        self.flavour, self.layers = flavour, list(layers)
        last = max(LAYERS[n] for n in layers)
        if flavour == "caffe":
            state = vgg_weights.load_state_dict(Path(weights_path) if weights_path else None)
            with torch.device("meta"):  # no random init of the 138M parameters the weights replace (1.3 s)
                features = vgg16().features[:23]
            features = features.to_empty(device="cpu")
            wrapper = nn.Module()  # the state dict is keyed `features.N.*`, as in torchvision's vgg16()
            wrapper.features = features
            wrapper.load_state_dict(state, strict=True)
            mean, std = torch.tensor(_CAFFE_MEAN) / 255.0, torch.full((3,), 1.0 / 255.0)
        else:
            from torchvision.models import VGG16_Weights  # downloads once into the torch hub cache
            features = vgg16(weights=VGG16_Weights.IMAGENET1K_V1).features[:23]
            mean, std = torch.tensor(_TV_MEAN), torch.tensor(_TV_STD)
        self.features = features[: last + 1].to(memory_format=torch.channels_last)
        # Frozen by requires_grad=False. Its layers (conv, ReLU, max-pool) compute the same in train and
        # eval mode, so it simply follows its parent's mode (a module forced into eval makes Lightning
        # warn at every fit); a mode-dependent layer here would change that, hence the check.
        moded = [type(m).__name__ for m in self.features if not isinstance(m, (nn.Conv2d, nn.ReLU, nn.MaxPool2d))]
        if moded:
            raise TypeError(f"VGG features hold layers whose output may depend on train/eval mode: {moded}")
        for p in self.features.parameters():
            p.requires_grad_(False)
        # (x - mean) / std with x in [0, 1]; for caffe std = 1/255 turns 0..1 into 0..255 minus mean.
        self.register_buffer("mean", mean.view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", std.view(1, 3, 1, 1), persistent=False)
        self._taps = {LAYERS[n]: n for n in layers}

    def forward(self, x: torch.Tensor, layers: list[str] | None = None) -> dict[str, torch.Tensor]:
        """{name: activation} for `layers` (default: all the layers given at construction); the
        network only runs as deep as the deepest one asked for (the content target needs relu2_2,
        a third of the cost of relu4_3).

        Runs channels-last (NHWC): oneDNN's convolutions and their backward then work without
        reordering every activation to and from their blocked layout. Same values."""
        wanted = self._taps if layers is None else {LAYERS[n]: n for n in layers}
        last = max(wanted)
        h = ((x - self.mean) / self.std).contiguous(memory_format=torch.channels_last)
        out: dict[str, torch.Tensor] = {}
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in wanted:
                out[wanted[i]] = h
            if i >= last:
                break
        return out
