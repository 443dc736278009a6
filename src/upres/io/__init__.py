"""Everything that touches files: images, atomic writes and the cache folder, weights formats
(``.pth``, safetensors, ncnn, ONNX), pretrained names, and the load/save entry points. Importing
this package imports none of its modules (``upres.io.files`` stays torch-free)."""
