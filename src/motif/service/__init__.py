"""The HTTP service: FastAPI routes over durable jobs, SQL metadata and blob storage. Knows nothing of torch."""
