"""Sentiment-analysis inference on Ray Serve: FastAPI ingress -> batched model deployment -> CPU/Neuron backend."""
