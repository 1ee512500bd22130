"""The OpenAPI schema as the API really behaves.

FastAPI's generated schema misses three things this API does: the submit and upload endpoints read
their body themselves (JSON, multipart or CSV), so the models they name in ``openapi_extra`` never
reach ``components``; errors are ``application/problem+json`` (``problems.py``), not FastAPI's
``HTTPValidationError``; and the API key is checked by a dependency, not a declared security scheme.
Clients and schema-driven tests (schemathesis) read the schema, so it must say all three.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute
from pydantic import BaseModel

from pynomaly.api import API_KEY_HEADER
from pynomaly.api.deps import require_api_key
from pynomaly.api.problems import PROBLEM_JSON
from pynomaly.api.schemas import JobCreate
from pynomaly.api.schemas_schedules import DatasetCreate

# Bodies parsed by hand (routes_jobs.submit_job, routes_datasets.upload_dataset).
RAW_BODY_MODELS: tuple[type[BaseModel], ...] = (JobCreate, DatasetCreate)
SECURITY_SCHEME = "ApiKey"

PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "Problem",
    "description": "RFC 9457 problem details: every error of this API.",
    "type": "object",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string", "description": "What was wrong, e.g. the field and the rule it broke."},
        "errors": {
            "type": "array",
            "description": "Request validation: every field that failed, in order.",
            "items": {
                "type": "object",
                "required": ["field", "message"],
                "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
            },
        },
    },
}


def _problem_response(description: str) -> dict[str, Any]:
    return {"description": description, "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}}}


def _needs_key(route: APIRoute) -> bool:
    pending = [route.dependant]
    while pending:
        dependant = pending.pop()
        if dependant.call is require_api_key:
            return True
        pending.extend(dependant.dependencies)
    return False


def complete(schema: dict[str, Any], routers: list[APIRouter]) -> dict[str, Any]:
    """Add the raw-body models, the Problem error responses and the API-key scheme to ``schema``."""
    components = schema.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for model in RAW_BODY_MODELS:
        generated = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, nested in generated.pop("$defs", {}).items():
            schemas.setdefault(name, nested)
        schemas.setdefault(model.__name__, generated)
    schemas["Problem"] = PROBLEM_SCHEMA
    # FastAPI's own 422 model is not what the API sends (problems.py turns it into a Problem).
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    components.setdefault("securitySchemes", {})[SECURITY_SCHEME] = {
        "type": "apiKey",
        "in": "header",
        "name": API_KEY_HEADER,
        "description": "Also accepted as Authorization: Bearer <key>.",
    }

    secured = {
        (method.lower(), route.path_format)
        for router in routers
        for route in router.routes
        if isinstance(route, APIRoute) and _needs_key(route)
        for method in route.methods or ()
    }
    for path, operations in schema.get("paths", {}).items():
        for method, operation in operations.items():
            responses = operation.setdefault("responses", {})
            if "422" in responses:
                responses["422"] = _problem_response("Invalid input: the detail names the field and the rule.")
            responses["4XX"] = _problem_response("A client error: the detail says what was wrong.")
            if (method, path) in secured:
                operation["security"] = [{SECURITY_SCHEME: []}]
    return schema


def install(app: FastAPI, routers: list[APIRouter]) -> None:
    """Generate the schema once, completed, when it is first asked for; ``routers`` are the
    included ones (their routes tell which operations need the API key)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = complete(generate(), routers)
        return app.openapi_schema

    # Replacing the method is FastAPI's documented way to extend the schema ("Extending OpenAPI").
    app.openapi = openapi  # type: ignore[method-assign]
