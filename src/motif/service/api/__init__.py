"""FastAPI layer: app factory, thin routes, schemas, dependencies."""
