"""The Open Inference Protocol REST routes of a peer's HTTP app checked by schemathesis
against the published OpenAPI file of the protocol (tests/data/open_inference_rest.yaml,
vendored verbatim): responses conform to their schemas, their status codes and content
types are documented, and no request makes the server fail.

The published file is corrected where it contradicts its own prose
(specification/protocol/inference_rest.md of the same repository), in ``corrected_spec``:

- Its paths write parameters as ``${MODEL_NAME}``; OpenAPI path templates are
  ``{MODEL_NAME}`` (a ``$`` is a literal character of the path), so schemathesis would
  request ``/v2/models/$iris``. The prose's paths are ``v2/models/${MODEL_NAME}``: shell
  notation for the same ``{MODEL_NAME}``.
- It documents the server metadata path as ``/v2/``; the prose (and tritonclient and
  KServe's client) use ``/v2``, which is what p2pnet serves (``/v2/`` with the token is
  redirected there, 307; without it, it is refused, 401, as it is not an open path).
- It lists the versioned model paths only; the prose makes the version optional
  (``v2/models/${MODEL_NAME}[/versions/${MODEL_VERSION}]``): the unversioned paths are
  added with the same operations.
- It documents 200 (and 400 for inference and server metadata) only, and model metadata
  without any error reply, while the prose says a failure is "indicated by an HTTP
  error status (typically 400)" with a ``{"error": string}`` JSON body: every operation
  gets a ``default`` reply of that shape, so an error reply must still be JSON with an
  ``error`` string (p2pnet answers 404 for a model nobody offers, 413 for a body over
  the limit, 503/504 when providers cannot answer: docs/gateway.md, "Errors").

Besides the generated requests, two valid iris requests per model name (so that 200
inference replies are checked too), and bodies that break the request schema (schemathesis's
negative mode), which must be refused with a 4xx.

p2pnet's own choices, documented in docs/gateway.md: every route but health and server
metadata takes a bearer token (sent here); a model name is a task tag or a model ID, a
version is a model ID (the cases use the served ones, and unknown ones).
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import schemathesis
import trio
import yaml
from hypothesis import strategies as st
from memory_peers import memory_peer
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Err
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from p2pnet.gateway.app import serve_http
from p2pnet.net.memory import MemoryNetwork

SPEC = Path(__file__).parent / "data" / "open_inference_rest.yaml"
TOKEN = "oip-schema-token"
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
]
# Examples per operation: 6 operations x this, each a request to the served app.
EXAMPLES = 60
IRIS_INPUT = {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}
IRIS_REQUESTS = [
    {"inputs": [IRIS_INPUT]},
    {"id": "42", "parameters": {}, "inputs": [IRIS_INPUT], "outputs": [{"name": "label"}]},
]
ERROR_REPLY = {
    "description": "An error: an HTTP error status with a JSON error object (prose).",
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {"error": {"type": "string"}},
                "required": ["error"],
            }
        }
    },
}


def corrected_spec() -> dict[str, Any]:
    """The published file with the corrections the module docstring lists."""
    raw: dict[str, Any] = yaml.safe_load(SPEC.read_text())
    paths: dict[str, Any] = {}
    for path, item in raw["paths"].items():
        path = re.sub(r"\$\{(\w+)\}", r"{\1}", path)
        path = "/v2" if path == "/v2/" else path
        paths[path] = item
        if "/versions/{MODEL_VERSION}" in path:
            unversioned = copy.deepcopy(item)
            unversioned["parameters"] = [
                p for p in unversioned["parameters"] if p["name"] != "MODEL_VERSION"
            ]
            for operation in unversioned.values():
                if isinstance(operation, dict) and "operationId" in operation:
                    operation["operationId"] += "-unversioned"
            paths[path.replace("/versions/{MODEL_VERSION}", "")] = unversioned
    for item in paths.values():
        for operation in item.values():
            if isinstance(operation, dict) and "responses" in operation:
                operation["responses"].setdefault("default", ERROR_REPLY)
    raw["paths"] = paths
    return raw


def check_against_spec(url: str, names: list[str], versions: list[str]) -> list[str]:
    """Run the checks on ``EXAMPLES`` generated requests per operation against ``url``;
    what failed, one line per (operation, check, message), empty when all passed. Model
    names and versions are drawn from ``names`` and ``versions``; the rest is generated."""
    schema = schemathesis.openapi.from_dict(corrected_spec())
    headers = {"Authorization": f"Bearer {TOKEN}"}
    failures: dict[str, None] = {}
    for result in schema.get_all_operations():
        if isinstance(result, Err):
            raise result.err()
        operation = result.ok()
        params = [p.name for p in operation.path_parameters]
        combos = [
            {k: v for k, v in (("MODEL_NAME", n), ("MODEL_VERSION", v)) if k in params}
            for n in names
            for v in versions
        ]
        strategies = [operation.as_strategy(path_parameters=p) for p in combos if p]
        if operation.method.upper() == "POST":
            # Requests the model answers (generated ones hardly ever are): 200 replies.
            strategies += [
                operation.as_strategy(path_parameters=p, body=body)
                for p in combos
                for body in IRIS_REQUESTS
            ]
        if operation.method.upper() == "POST":
            # Bodies that break the request schema: each must be refused with a 4xx.
            strategies += [
                operation.as_strategy(GenerationMode.NEGATIVE, path_parameters=p) for p in combos
            ]
        strategy = st.one_of(strategies or [operation.as_strategy()])

        @hypothesis.settings(
            max_examples=EXAMPLES,
            derandomize=True,
            database=None,
            deadline=None,
            suppress_health_check=list(hypothesis.HealthCheck),
        )
        @hypothesis.given(case=strategy)
        def run(case: schemathesis.Case[Any]) -> None:
            response = case.call(base_url=url, headers=headers, timeout=20)
            try:
                case.validate_response(response, checks=CHECKS, headers=headers)
            except (AssertionError, BaseExceptionGroup) as exc:
                leaves = exc.exceptions if isinstance(exc, BaseExceptionGroup) else [exc]
                for leaf in leaves:
                    title = getattr(leaf, "title", type(leaf).__name__)
                    failures.setdefault(f"{case.operation.label}: {title}: {str(leaf)[:300]}")

        run()
    return list(failures)


@pytest.mark.network
@pytest.mark.slow
async def test_the_oip_routes_conform_to_the_published_spec(models: dict[str, Path]) -> None:
    async with MemoryNetwork() as network, memory_peer(network) as caller:
        provider = memory_peer(network, bootstrap=[caller.addrs[0]])
        info = provider.serve(models["iris"], tasks=["iris-species"])
        async with provider, trio.open_nursery() as nursery:
            await provider.announce()
            url = await nursery.start(serve_http, caller, "127.0.0.1", 0, TOKEN)
            names = ["iris-species", info.model_id, "no-such-model"]
            versions = [info.model_id, "1"]
            failures = await trio.to_thread.run_sync(check_against_spec, url, names, versions)
            nursery.cancel_scope.cancel()
    assert not failures, "\n".join(failures)
