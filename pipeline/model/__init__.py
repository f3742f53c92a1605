"""Model stage: the generators, their layers and how they are rebuilt from files; imports only torch
(and `common`).

- `generators`, `layers`, `norms`: the two generators, their building blocks and normalizations;
  `fast_ops`: exact, cheaper inference forms of the slowest layers;
- `checkpoint`: a generator from a Lightning checkpoint; `packaged_format`: the fp16 safetensors of
  `models/`; `pytorch_examples`: generators trained elsewhere, rebuilt as ours; `style_fingerprints`:
  style images as thumbnails, which tell a painting added twice.
"""
