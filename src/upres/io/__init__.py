"""Everything that touches files: images, atomic writes and the cache folder, LR/HR pairs and
their decode cache, weights formats (``.pth``, safetensors, ncnn, ONNX), pretrained names, the
load/save entry points and result tables. Importing this package imports none of its modules
(``files``, ``images``, ``pairs`` and ``tables`` stay torch-free)."""
