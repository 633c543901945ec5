"""Alembic migrations of the service tables (run them with ``service.core.db.upgrade``)."""
