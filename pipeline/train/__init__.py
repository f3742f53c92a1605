"""Training stage: the LightningModule, the style images it trains on, its callbacks and checkpoint
writes, the LightningCLI entry and the presets.

- `module`: the LightningModule; `styles`: which style images a run trains on; `generator_config`: the
  generator a run builds (its options, FROM's, what a resume must match); `adapt`: styles added to a
  trained model (`FROM=`: grafted rows, what learns, replay); `regularizers`: the
  temporal-stability term; `nonfinite`: skipping non-finite steps; `seeds`: per-rank random streams;
- `callbacks`: image grids and the bound on a run's end; `checkpoint_io`: checkpoints written atomically;
- `cli`: the LightningCLI entry (`fit`, `validate`, …) and `configs/`, the presets (and `adapt.yaml`, FROM='s overlay).
"""
