"""Tests of the server over real gRPC: input, contract, reliability, security, loading."""
