"""Tests of the interpretability methods against independent oracles."""
