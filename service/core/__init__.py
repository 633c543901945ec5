"""Infrastructure the rest of the service stands on: settings, the database (engine, sessions,
typed models, Alembic migrations), the Optuna storage, problem+json errors, limits, API keys,
logging and metrics. Nothing here knows about jobs, routes or workers."""
