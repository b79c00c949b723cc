"""HTTP edge: FastAPI routes, error mapping; app.py is the composition root."""
