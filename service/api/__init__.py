"""HTTP routers, one module per resource; ``service.app`` mounts them."""
