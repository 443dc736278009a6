"""Scoring: ``metrics`` (PSNR/SSIM as BasicSR, the bicubic baseline), ``evaluate`` (folders of
predictions against ground truth), ``report`` (the offline HTML report)."""
