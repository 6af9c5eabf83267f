"""The OpenAPI document is valid and describes exactly the routes the server serves."""

from __future__ import annotations

import httpx
from openapi_spec_validator import validate
from starlette.routing import Route

from tests.server.conftest import World


async def test_the_document_is_valid_openapi_3_1(anonymous: httpx.AsyncClient) -> None:
    document = (await anonymous.get("/openapi.json")).json()
    assert document["openapi"] == "3.1.0"
    validate(document)


async def test_the_document_lists_every_api_route_and_no_other(
        anonymous: httpx.AsyncClient, world: World) -> None:
    document = (await anonymous.get("/openapi.json")).json()
    documented = {(method.upper(), path) for path, item in document["paths"].items()
                  for method in item}
    served = {(method, route.path) for route in world.server.routes
              if isinstance(route, Route) and (route.path.startswith(("/api/", "/e/"))
                                               or route.path == "/metrics")
              for method in (route.methods or ()) if method != "HEAD"}
    assert documented == served


async def test_secured_operations_name_their_schemes(anonymous: httpx.AsyncClient) -> None:
    document = (await anonymous.get("/openapi.json")).json()
    runs = document["paths"]["/api/v1/runs"]["get"]
    assert runs["security"] == [{"bearer": []}, {"session": []}]
    assert "401" in runs["responses"]
    ingest = document["paths"]["/e/{event_key}"]["post"]
    assert "security" not in ingest
    assert ingest["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/IngestBody")
