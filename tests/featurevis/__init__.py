"""Tests of feature visualization: the engine core and the Visualize stream."""
