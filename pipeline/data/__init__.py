"""Data stage: content photos → WebDataset shards → training batches.

- `shards`: the `shards` command (a folder of photos → `train-*.tar`, `val-*.tar`); `shard_writer`: one split,
  written resumably in a process pool; `builtin_photos`: the default content set scikit-image ships;
- `sources`: where shards are read from (a folder, a brace pattern, URLs, `pipe:`);
- `datamodule`: the LightningDataModule; `stream_stages`: the stream's stages inside DataLoader workers.
"""
