"""mfmda_lib: the library behind the teaching kit "Adapting foundation models to medical images".

Layers, bottom up (a lower layer never imports a higher one):

- ``environment``: the device, the folders, seeding; ``profiles``: every size (the two modules that read the
  environment)
- ``io``: atomic writes, checksums, image reading with clear errors
- ``data``: one sample format, the synthetic multi-domain fundus benchmark, real-dataset loaders
- ``models``: foundation-model registry (LiteMedSAM offline, SAM / MedSAM ViT-B), encoder cache
- ``evaluation``: metrics, zero-shot evaluation, domain probes
- ``train``: the one training loop (``fit``: tqdm, early stopping, resumable checkpoints)
- ``ssl``: a small ViT with MAE and DINO pretraining, and downstream probes (notebook 02)
- ``adapt``: decoder adapters, SAM tuning, test-time adaptation (notebooks 05-06)
- ``plots``: every figure helper
- ``experiments``: the notebooks' experiments in a few calls; ``cli``: the ``mfmda`` command
"""
from .environment import get_device, paths, seed_everything
from .profiles import PROFILES, Profile, describe_environment, get_profile

__version__ = "0.1.0"
__all__ = ["PROFILES", "Profile", "describe_environment", "get_device", "get_profile", "paths", "seed_everything"]
