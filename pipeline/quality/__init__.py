"""Quality stage: metrics, `evaluate`, the Gatys baseline, the ablation and figures; may use every stage
but `ops`.

- `metrics`: PSNR (scikit-image's) and the border-artifact index; `stability`: flicker; `strength_curve`:
  what the strength slider does;
- `evaluate`: the `evaluate` command and its report; `gatys`: the Gatys baseline (the `gatys` command);
- `ablation`, `ablation_report`: the paper's ablation (`make ablation`); `figures`: side-by-side figures.
"""
