"""Training: ``config`` (the typed YAML schema, torch-free), ``data`` (pairs, checks, cache,
crops, sampler), ``loop`` (``train()`` and its named steps), ``experiment`` (plans of arms)."""
