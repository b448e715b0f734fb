"""Benchmark: this service against the seed article's Flask app, side by side (python -m bench.run)."""
