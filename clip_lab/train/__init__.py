"""Training: the LightningModule, the LightningCLI, optimizer and schedule, distributed helpers, run records."""
