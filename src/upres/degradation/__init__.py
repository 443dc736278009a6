"""How the LR was made: known downscaling recipes, fitted kernels (fingerprints), the blind
LR-only classifier, synthesized pairs and LR-consistency refinement: pure estimation on NumPy
arrays, without PyTorch (tested)."""
