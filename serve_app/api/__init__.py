"""HTTP: the FastAPI routes, the body limit, request context, the error taxonomy and the schemas."""
