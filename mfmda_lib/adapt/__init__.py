"""Adaptation methods, one module per family, each with a small verb API.

- ``decoder_adapter``: SAM-DA adapter tokens in SAM's mask decoder behind zero-initialised gates
  (``inject`` / ``remove`` / ``adapter_parameters`` / ``adapter_state_dict``).
- ``sam_tuning``: supervised training of the adapter or the whole decoder on cached embeddings,
  single-image test-time adaptation of the adapter.
- ``sam_lora``: encoder LoRA with ``peft`` (the encoder runs every step).
- ``sam_comparison``: notebook 05's comparison of those methods with the frozen model.
- ``tta_base``: the interface every test-time adaptation method shares (wrap a model, ``adapt(x)``,
  ``predict(x)``, ``reset()``): ``TTAConfig``, ``TTAMethod``, BatchNorm configuration, the entropy losses.
- ``tta``: source-only, norm statistics, Tent, pseudo-labels, and ``TTA_METHODS`` (every method by name).
- ``tta_augmented``: MEMO (AugMix views, BatchNorm prior) and the mean teacher (augmented EMA teacher).
- ``tta_source``: notebook 06's source models, a small U-Net trained on the source, one per seed.
- ``tta_benchmark``: the three regimes (episodic, online, continual), the failure settings and
  forgetting, over every seed, for notebook 06.
- ``tta_verdicts``: notebook 06's paired comparisons over seeds and images, and its verdict.
"""
