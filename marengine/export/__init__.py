"""Export to ONNX and torch-free deployment.

- `marengine.export.onnx`: `export_onnx`, `export_from_checkpoint` (needs torch, onnx, onnxscript)
- `marengine.export.runtime`: onnxruntime sessions (`OnnxBackbone`, `OnnxHead`, `OnnxDecoder`,
  `OnnxBackboneModule`); imports torch only when given torch tensors
- `marengine.export.deploy`: the torch-free sampler (numpy + onnxruntime), `python -m marengine.export.deploy`

Nothing is imported here, so `import marengine.export.deploy` never pulls in torch.
"""
