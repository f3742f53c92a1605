"""Training stage: the LightningModule, the style images it trains on, its callbacks and checkpoint
writes, the LightningCLI entry and the presets.

- `module`: the LightningModule; `styles`: which style images a run trains on; `regularizers`: the
  temporal-stability term; `nonfinite`: skipping non-finite steps; `seeds`: per-rank random streams;
- `callbacks`: image grids and the bound on a run's end; `checkpoint_io`: checkpoints written atomically;
- `cli`: the LightningCLI entry (`fit`, `validate`, …) and `configs/`, the presets.
"""
