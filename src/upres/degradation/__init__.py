"""How the LR was made: known downscaling recipes, fitted kernels (fingerprints), a blind LR-only
classifier, synthesized pairs and LR-consistency refinement. Torch-free."""
