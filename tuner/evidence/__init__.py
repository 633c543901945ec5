"""Evidence behind recommendations: what published trainings used (``published.csv``)."""

from tuner.evidence.published import (
    PublishedEvidenceError,
    PublishedTraining,
    Warmup,
    parse_published_trainings,
    published_trainings,
)

__all__ = [
    "PublishedEvidenceError",
    "PublishedTraining",
    "Warmup",
    "parse_published_trainings",
    "published_trainings",
]
