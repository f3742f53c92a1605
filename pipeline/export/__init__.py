"""Export stage: a run's checkpoint → verified model files → a TorchServe `.mar`; models from elsewhere in.

- `exporter`: the `export` command (`.pt`, `.pt2`, `.onnx`, each checked against eager); `graph_devices`:
  graphs without device constants; `onnx_export`, `onnx_runtime`: the `.onnx` file and its runner;
- `archive`: the `archive` command (a `.mar` with exactly the modules the handler imports);
- `package_command`: the `package` command (fp16 safetensors under `models/`); `import_command`: the
  `import` command (a model trained elsewhere → `runs/NAME/export/`).
"""
