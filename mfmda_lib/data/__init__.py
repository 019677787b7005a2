"""Fundus data: one sample format, the synthetic benchmark, and loaders for real datasets."""
from .dataset import FundusDataset, SampleRef, group_by_domain, load_folder_domain
from .sample import GLAUCOMA_SUSPECT_VCDR, FundusSample, mask_box, vertical_cdr
from .synthetic import (DOMAINS, SEVERITY_STEPS, SOURCE_DOMAIN, TARGET_DOMAINS, DomainStyle, benchmark_dir,
                        generate_benchmark, generate_sample, load_benchmark, style_at, style_table)

__all__ = [
    "FundusDataset", "SampleRef", "group_by_domain", "load_folder_domain", "SEVERITY_STEPS", "style_table", "FundusSample", "GLAUCOMA_SUSPECT_VCDR", "mask_box",
    "vertical_cdr", "DOMAINS", "SOURCE_DOMAIN", "TARGET_DOMAINS", "DomainStyle", "benchmark_dir",
    "generate_benchmark", "generate_sample", "load_benchmark", "style_at",
]
