"""Property-based API testing of `hark serve` against its own OpenAPI schema: no input gets a 5xx."""

from __future__ import annotations

import os

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from test_serve import fill, random_bundle, settings_for  # noqa: E402

KEY = "fuzz-key"
# Examples per operation: 12 keeps the suite quick; a deeper hunt sets more (HARK_FUZZ_EXAMPLES=300).
EXAMPLES = int(os.environ.get("HARK_FUZZ_EXAMPLES", "12"))


@pytest.fixture(scope="module")
def fuzz_app(tmp_path_factory):
    from hark.bundle import Bundle
    from hark.plugin.serve import create_app
    from hark.store import connect

    tmp = tmp_path_factory.mktemp("fuzz")
    bundle = Bundle.load(random_bundle(tmp / "b"))
    config = settings_for(tmp, HARK_API_KEY=KEY, HARK_QUERY_BATCH_WAIT_MS="0")
    client = connect(config)
    fill(client, bundle, 40, tmp / "media")
    yield create_app(config, bundle, client=client)
    client.close()


def _aim_at_the_collection(schema: dict) -> None:
    """Path parameters from a small set, so most requests reach the store instead of a 404 for a random name."""
    for operations in schema["paths"].values():
        for operation in operations.values():
            for param in operation.get("parameters", []):
                if param["in"] == "path" and param["name"] == "name":
                    param["schema"] = {"type": "string", "enum": ["sounds", "missing"]}
                elif param["in"] == "path":
                    param["schema"] = {"type": "string", "enum": ["0", "50", "1", "not-an-id",
                                                                  "00000000-0000-0000-0000-000000000003"]}


def test_no_request_gets_a_5xx(fuzz_app):
    """Every operation of the schema, with generated (mostly hostile) inputs and the key."""
    _aim_at_the_collection(fuzz_app.openapi())  # FastAPI serves this cached dict at /openapi.json
    api = schemathesis.openapi.from_asgi("/openapi.json", fuzz_app, headers={"api-key": KEY})
    operations = [result.ok() for result in api.get_all_operations()]
    assert len(operations) >= 12
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case):
            response = case.call(headers={"api-key": KEY})
            assert response.status_code < 500, (case.method, case.path, case.body, response.text[:300])

        check()
