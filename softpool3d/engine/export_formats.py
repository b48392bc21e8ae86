"""The formats ``softpool3d-export`` writes: ONNX (standard ops only) and a ``torch.export`` program
(``.pt2``). Import-light, so that the command line offers them without importing torch."""

EXPORT_FORMATS = ("onnx", "pt2")
