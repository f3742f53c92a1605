"""Quality stage: metrics, the `evaluate` report, the Gatys baseline, the paper's ablation and figures. May use every stage."""
