"""Training: ``config`` (the typed YAML schema, torch-free), ``data`` (splits, crops, sampler),
``loop`` (``train()`` and its named steps), ``checkpoints`` (resumable state), ``experiment``
(plans of arms), ``experts`` and ``per_recipe`` (the degradation arms)."""
