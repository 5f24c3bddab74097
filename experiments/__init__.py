"""The paper's experiments beyond the main run: ablations, Figure 1 and
baselines."""
