"""TIVE: high-value data selection for visual instruction tuning (arXiv 2403.09559)."""

__version__ = "0.1.0"
