"""Fundus data: one sample format, the synthetic benchmark, sample selection, tensors, and loaders for real datasets."""
from .benchmark import benchmark_dir, generate_benchmark, load_benchmark
from .dataset import MASK_READERS, FundusDataset, SampleRef, group_by_domain, load_folder_domain
from .domains import DOMAINS, SEVERITY_STEPS, SOURCE_DOMAIN, TARGET_DOMAINS, TRAIT_STAGES, DomainStyle, style_at, style_table
from .real import LOADERS, load_dataset
from .sample import GLAUCOMA_SUSPECT_VCDR, FundusSample, mask_box, vertical_cdr
from .selection import benchmark_samples, prepare_benchmark
from .synthetic import generate_sample
from .tensors import PIXEL_MEAN, PIXEL_STD, normalised_tensors

__all__ = [
    # one sample format, lazily loaded datasets
    "FundusSample", "FundusDataset", "SampleRef", "MASK_READERS", "group_by_domain", "load_folder_domain",
    "GLAUCOMA_SUSPECT_VCDR", "mask_box", "vertical_cdr",
    # the synthetic benchmark
    "DOMAINS", "SOURCE_DOMAIN", "TARGET_DOMAINS", "SEVERITY_STEPS", "TRAIT_STAGES", "DomainStyle", "style_at", "style_table",
    "generate_sample", "generate_benchmark", "load_benchmark", "benchmark_dir",
    # the profile's benchmark and the samples each experiment draws from it
    "prepare_benchmark", "benchmark_samples",
    # samples as normalised tensors for the small models
    "PIXEL_MEAN", "PIXEL_STD", "normalised_tensors",
    # real datasets
    "LOADERS", "load_dataset",
]
