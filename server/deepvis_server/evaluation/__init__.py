"""Evaluate: sanity checks and faithfulness metrics of the methods, served beside them."""
