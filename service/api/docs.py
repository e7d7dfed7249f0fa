"""The OpenAPI document and its two readers, ``/docs`` (Swagger UI) and ``/redoc``, offline.

The pages load their JavaScript, CSS and icon from ``/docs-assets``, the files shipped by the
``fastapi-offline`` package (Swagger UI under Apache-2.0, ReDoc under MIT, as its licence file
says), so they render on a machine without internet. The OpenAPI document names each operation
by its route name (``score``, ``v2_infer``: what a generated client calls its methods), declares
the API keys as security schemes and holds the schemas of bodies that routes read themselves.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.encoders import jsonable_encoder
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.routing import APIRoute
from fastapi.security.base import SecurityBase
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel

ASSETS = "/docs-assets"


def operation_id(route: APIRoute) -> str:
    """A route's OpenAPI operation id: its name (``score``, ``v2_infer``)."""
    return route.name


def install_docs(
    app: FastAPI,
    body_models: tuple[type[BaseModel], ...],
    security_schemes: tuple[SecurityBase, ...] = (),
) -> None:
    """Serve ``/docs`` and ``/redoc`` from local assets; add ``body_models`` to the schemas and
    ``security_schemes`` to the security schemes (operations name them in their ``security``).

    ``app`` must be created with ``docs_url=None, redoc_url=None`` and
    ``generate_unique_id_function=operation_id``.
    """
    assets = Path(str(files("fastapi_offline") / "static"))
    app.mount(ASSETS, StaticFiles(directory=assets), name="docs_assets")
    openapi_url = app.openapi_url or "/openapi.json"
    title = app.title

    @app.get("/docs", include_in_schema=False, name="docs")
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{title} - Swagger UI",
            swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS}/favicon.png",
        )

    @app.get("/redoc", include_in_schema=False, name="redoc")
    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=openapi_url,
            title=f"{title} - ReDoc",
            redoc_js_url=f"{ASSETS}/redoc.standalone.js",
            redoc_favicon_url=f"{ASSETS}/favicon.png",
            with_google_fonts=False,
        )

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = FastAPI.openapi(app)
            schemas = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in body_models:
                body = model.model_json_schema(ref_template="#/components/schemas/{model}")
                schemas.update(body.pop("$defs", {}))
                schemas[model.__name__] = body
            declared = schema["components"].setdefault("securitySchemes", {})
            for scheme in security_schemes:
                model = jsonable_encoder(scheme.model, by_alias=True, exclude_none=True)
                declared[scheme.scheme_name] = model
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]
