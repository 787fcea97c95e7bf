"""Tests of the explorer (deepvis ui): its gateway over HTTP and its page in a real browser."""
