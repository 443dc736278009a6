"""Inference: ``backends`` (which backend runs a model, and why), ``engine`` (NumPy arrays in and
out: tiles and self-ensemble for any described model), ``upscaler`` (images, files and folders),
``ensemble`` (soft voting of several models, validation), ``submission`` (a test folder into a
submission), ``route`` (routed experts)."""
