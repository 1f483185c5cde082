"""`protadapt serve`: one trained run behind a REST API and a web page (needs `pip install 'protadapt[serve]'`)."""

from __future__ import annotations

import importlib
from pathlib import Path

from protadapt.serve.parsing import RequestError
from protadapt.serve.service import ModelService, ServeSettings

EXTRA_MODULES = ("fastapi", "uvicorn")

__all__ = ["ModelService", "RequestError", "ServeSettings", "require_extra", "serve"]


def serve(run_dir: str | Path, settings: ServeSettings) -> None:
    """Load the run once, then answer HTTP requests until interrupted."""
    require_extra()
    import uvicorn

    from protadapt.serve.app import create_app

    service = ModelService.load(run_dir, settings)
    uvicorn.run(create_app(service), host=settings.host, port=settings.port, log_level="info")


def require_extra() -> None:
    """A missing optional dependency is one line that says how to install it."""
    for name in EXTRA_MODULES:
        try:
            importlib.import_module(name)
        except ImportError:
            raise RuntimeError(f"protadapt serve needs {name}; install it with: pip install 'protadapt[serve]'") from None
