"""Gradient features: per-record LoRA gradients, random projections, and the feature store."""
