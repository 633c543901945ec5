"""The HTTP surface: request and response schemas (:mod:`service.api.schemas`), the FastAPI
dependencies (:mod:`service.api.deps`), the documentation pages (:mod:`service.api.docs`) and one
router per resource (:mod:`service.api.routes`); ``service.app`` mounts them."""
