"""`python -m pipeline <command>`: LightningCLI verbs (fit, validate, ...) plus the project's tools.

  fit|validate|test|predict  LightningCLI (training), e.g. `fit --config pipeline/train/configs/cpu.yaml`
  shards                     write content photos as WebDataset shards
  sample-data                build the scikit-image sample shards
  vgg-weights                fetch, convert and verify the VGG-16 weights
  export                     TorchScript + torch.export of a run's generator
  archive                    .mar archive(s) for TorchServe
  stylize                    stylize files or folders offline (same pixels as the server)
  figure                     a content | stylized figure from a model and a photo
  loadtest                   concurrent clients against a private loopback TorchServe
  evaluate                   losses, time, contrast PSNR and border index of a model on photos
  gatys                      the slow baseline: Gatys et al. optimization with the same loss
  ablation                   the paper's comparisons (norm × generator, padding) trained and evaluated
"""
from __future__ import annotations

import importlib
import sys
from pathlib import Path

TOOLS = {
    "shards": "pipeline.data.shards",
    "vgg-weights": "pipeline.loss.vgg_weights",
    "export": "pipeline.export.exporter",
    "archive": "pipeline.export.archive",
    "stylize": "pipeline.serve.stylize",
    "figure": "pipeline.quality.figures",
    "loadtest": "pipeline.ops.loadtest",
    "evaluate": "pipeline.quality.evaluate",
    "gatys": "pipeline.quality.gatys",
    "ablation": "pipeline.quality.ablation",
}


def main(argv: list[str] | None = None) -> int:
    """Dispatch to a tool or to LightningCLI; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd in TOOLS:
        # Tools return an int (or None for success); keep it so `make` sees failures.
        return int(importlib.import_module(TOOLS[cmd]).main(rest) or 0)
    if cmd == "sample-data":
        from pipeline.data.sample_data import ensure_sample_shards
        ensure_sample_shards(Path(rest[0]) if rest else Path("data/shards/skimage"))
        return 0
    from pipeline.train.cli import run_cli
    run_cli(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
