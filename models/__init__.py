"""Recipes for the small models the demo, tests and benchmarks build locally (fixed seeds)."""
