"""Exporters: model sources → a bundle, and a bundle → a Triton model repository."""
