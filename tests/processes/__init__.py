"""Tests that drive real server processes: workers, killed clients, demo, deployment, examples."""
