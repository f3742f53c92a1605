"""Export stage: a run's checkpoint → verified TorchScript / torch.export files → a TorchServe `.mar`."""
