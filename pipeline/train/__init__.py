"""Training stage: the LightningModule, its callbacks and checkpoint IO, the LightningCLI entry and the preset configs."""
