"""Routers per concern: health, models, metrics, inference."""
