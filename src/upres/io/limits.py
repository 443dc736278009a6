"""Input limits, shared by the image reader and the CLI's defaults (no heavy imports here).

A header can claim any size: a 100000 x 100000 PNG of a few bytes would ask for 30 GB when
decoded. Images over ``DEFAULT_MAX_PIXELS`` are refused before decoding unless ``--max-pixels``
says otherwise; OpenCV's decoders refuse more than ``MAX_PIXELS_LIMIT`` in any case."""

DEFAULT_MAX_PIXELS = 100_000_000
MAX_PIXELS_LIMIT = 2 ** 30
