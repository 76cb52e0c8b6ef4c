"""Integrations with other data systems (optional extras; each module imports its own library)."""
