"""portable-ep: export a model once, serve it through Triton on any hardware."""
__version__ = "0.1.0"
