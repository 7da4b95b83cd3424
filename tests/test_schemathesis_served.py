"""Schemathesis against a served gateway: a real `gateway serve` process, over real sockets, on the demo.

The in-process run (tests/http/test_schemathesis.py) proves the app against its document in every phase;
this one proves what a client meets: uvicorn's parsing and framing, the served /openapi.json, and the
per-address failure backoff, which only a real socket gives an address to. Each run has its own process
and its own copy of the demo (a vendor's run revokes and amends what the others would use). The same
configuration and the same excuses as the in-process run (INEXPRESSIBLE: rules JSON Schema cannot
state), nothing loosened, with fewer examples.

Once per role, with and without credentials; and again, as a member and without credentials, after
the backoff has blocked the test's address (gateway/backoff.py): a valid key is still served, no answer
is a 500, and the only new answer is the documented 429 to a failing credential.

Runtime: the coverage phase (boundary values, negative data, unexpected methods) costs most of a run,
so it runs where issue 14 found the document wrong, as a member on a served gateway; the other runs
have the examples, fuzzing and stateful phases. About a minute for the six runs on two cores.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from schemathesis import engine
from schemathesis.engine import events
from schemathesis.openapi.checks import AuthScenario, IgnoredAuth

from tests.http import test_schemathesis as in_process
from tests.processes import GatewayProcess

# Over sockets, fewer examples than in-process (in_process.MAX_EXAMPLES).
MAX_EXAMPLES = 3
# Failures that block an address under the default GATEWAY_AUTH_BACKOFF_FAILURES (10), with margin;
# under the default window and ceiling (60 s, 300 s) the address stays blocked for the whole run.
BLOCKING_FAILURES = 20
BAD_KEY = "not-a-key"

RUNS = [*(("open", role) for role in in_process.ROLES), ("blocked", "member"), ("blocked", "none")]
# Where the coverage phase runs (see the module's docstring).
COVERAGE = {("open", "member")}


def _start(dsn: str, home: Path, phase: str) -> GatewayProcess:
    settings: dict[str, str] = {"GATEWAY_POOL_SIZE": "4"}
    if phase == "open":
        # Schemathesis's ignored_auth probes send invalid keys from this one address: an unblocked run
        # needs a threshold it cannot reach. The blocked runs keep the defaults.
        settings["GATEWAY_AUTH_BACKOFF_FAILURES"] = "1000000"
    return GatewayProcess(dsn, home, f"schemathesis-{phase}", **settings)


@pytest.fixture
def served(request: pytest.FixtureRequest, demo_dsn: str, tmp_path: Path) -> Iterator[GatewayProcess]:
    process = _start(demo_dsn, tmp_path, request.node.callspec.params["phase"])
    try:
        asyncio.run(process.ready())
        yield process
    finally:
        # Stopped before demo_dsn drops its database.
        process.terminate()


def _usage(client: httpx.Client, key: str) -> httpx.Response:
    return client.get("/v1/usage", headers={"Authorization": f"Bearer {key}"})


def _block(url: str, valid_key: str) -> None:
    """Fail authentication until the address is made to wait; a valid key must still pass."""
    with httpx.Client(base_url=url, timeout=10) as client:
        statuses = [_usage(client, BAD_KEY).status_code for _ in range(BLOCKING_FAILURES)]
        assert statuses[0] == 401 and statuses[-1] == 429, statuses
        assert _usage(client, valid_key).status_code == 200


def _still_blocked(url: str, valid_key: str) -> None:
    with httpx.Client(base_url=url, timeout=10) as client:
        refused = _usage(client, BAD_KEY)
        assert refused.status_code == 429 and int(refused.headers["Retry-After"]) > 0, refused.text
        assert "too many failed authentications" in refused.json()["detail"]
        assert _usage(client, valid_key).status_code == 200


def _excused_when_blocked(context: Any, failure: Any, case: Any, response: Any) -> bool:
    """filter_failure for the blocked address: one more answer is right, the 429 to a failing credential.

    ignored_auth probes an operation it was served with the key by sending an invalid key instead, and
    expects 401 or 403. From a blocked address the answer is the documented 429 with Retry-After
    (gateway/backoff.py: only failures are slowed). The hook sees the served response, not the probe's,
    so the probe is told by the failure itself: its scenario and the status its message names.
    """
    if not in_process._excused(context, failure, case, response):
        return False
    return not (isinstance(failure, IgnoredAuth) and failure.scenario == AuthScenario.INVALID_AUTH
                and "got `429 " in failure.message and 200 <= response.status_code < 300)


@pytest.mark.slow
@pytest.mark.parametrize(("phase", "role"), RUNS)
def test_the_served_gateway_answers_as_its_openapi_document_says(phase: str, role: str, served: GatewayProcess,
                                                                   demo_content: dict[str, Any]) -> None:
    member_key = in_process._key("member", demo_content)
    assert member_key is not None
    if phase == "blocked":
        _block(served.url, member_key)
    config = in_process._config(role, demo_content)
    project = config.projects.default
    project.update(base_url=served.url)
    project.generation.update(max_examples=MAX_EXAMPLES)
    project.phases.coverage.enabled = (phase, role) in COVERAGE
    started = time.monotonic()
    schema = schemathesis.openapi.from_url(f"{served.url}/openapi.json", config=config)
    schema.hook("filter_failure")(_excused_when_blocked if phase == "blocked" else in_process._excused)
    problems: list[str] = []
    statuses: Counter[int] = Counter()
    scenarios = 0
    for event in engine.from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            scenarios += 1
            problems += in_process._describe(event.recorder)
            statuses.update(i.response.status_code for i in event.recorder.interactions.values()
                            if i.response is not None)
        elif isinstance(event, events.NonFatalError):
            problems.append(f"[error] {event.label}: {event.info.title}\n{event.info.message}")
        elif isinstance(event, events.FatalError):
            raise event.exception
        elif isinstance(event, events.EngineFinished):
            problems += [f"[after run] {f.title}\n{f.message}" for f in event.failures]
    assert scenarios, "Schemathesis ran nothing"
    print(f"{phase} {role}: {scenarios} scenarios, {statuses.total()} requests in "
          f"{time.monotonic() - started:.1f} s: {dict(sorted(statuses.items()))}")
    assert not problems, f"{len(problems)} failures as {role} ({phase}):\n\n" + "\n\n".join(problems)
    # not_a_server_error is among the checks; this says it of every answer, probes included.
    assert not [status for status in statuses if status >= 500], statuses
    assert any(200 <= status < 300 for status in statuses), statuses
    if phase == "blocked":
        if role == "member":
            # The probes' invalid keys were answered 429, the key itself was served.
            assert statuses[429], statuses
        _still_blocked(served.url, member_key)
