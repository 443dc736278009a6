"""Inference: ``engine`` (tensors in, tensors out, tiles and self-ensemble for any described
model), ``upscaler`` (images, files and folders), ``predict`` (submissions and soft-voting
ensembles)."""
