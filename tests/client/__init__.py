"""Tests of the client library, the CLI, failover and the Node.js clients."""
