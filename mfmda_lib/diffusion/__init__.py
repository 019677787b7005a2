"""Diffusion models and MFM-DA stage 1 (notebooks 07-08)."""
