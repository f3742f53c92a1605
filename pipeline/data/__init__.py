"""Data stage: content photos → WebDataset shards (`shards`, `sample_data`) → training batches (`datamodule`)."""
