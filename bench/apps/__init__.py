"""The servers the HTTP benchmarks run beside this service: the seed app and the LitServe peers."""
