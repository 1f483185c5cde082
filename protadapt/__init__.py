"""protadapt: adapt ESM protein language models to small biomedical prediction tasks."""

__version__ = "0.1.0"
