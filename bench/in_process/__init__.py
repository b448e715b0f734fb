"""Benchmarks that run the model in this process (no HTTP): backends, packed weights, one request's worst cost."""
