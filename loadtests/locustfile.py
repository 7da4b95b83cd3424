"""Locust scenario: realistic mixed traffic against a gateway deployment, for capacity tests.

Not a project dependency: `pip install locust` into any environment (see loadtests/README.md). Keys
come from a demo.json-like file (the shape `gateway demo` writes: `dataset`, `vendor_id`,
`vendor_admin_key`, `compliance_key`, `members[].api_key`, `members[].licence_id`):

    LPD_KEYS=.gateway/demo.json locust -f loadtests/locustfile.py --host http://127.0.0.1:8080 \\
        --users 50 --spawn-rate 10 --run-time 5m --headless

Three kinds of users, weighted like a production day:
- members (weight 20): list their datasets, read a dataset's metadata, page through records with the
  `next` links (a page of 100–1,000, up to a few pages), check their usage; now and then a full CSV
  export, streamed and discarded;
- vendor admins (weight 1): publish a small new version (CSV), amend a licence's quotas (to values
  that never refuse a member), read members and licences;
- compliance officers (weight 2): read the usage report by day and by month, licences and keys.

Every request is audited by the gateway, and publishing adds versions (each visible to members at
once): run it against a deployment you mean to fill. It refuses any host but loopback unless
LPD_LOCUST_ALLOW_REMOTE=1 names the decision to load a real deployment.
"""

from __future__ import annotations

import ipaddress
import json
import os
import random
import urllib.parse
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from locust import HttpUser, between, events, task

_KEYS: dict[str, Any] = {}


def keys() -> dict[str, Any]:
    if not _KEYS:
        path = Path(os.environ.get("LPD_KEYS", ".gateway/demo.json"))
        _KEYS.update(json.loads(path.read_text()))
    return _KEYS


@events.test_start.add_listener
def _check_target(environment: Any, **_: Any) -> None:
    host = urllib.parse.urlsplit(environment.host or "").hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback and os.environ.get("LPD_LOCUST_ALLOW_REMOTE") != "1":
        raise SystemExit(f"{host!r} is not a loopback address: set LPD_LOCUST_ALLOW_REMOTE=1 to load a deployment")
    keys()  # fail before the first user starts if the key file is missing


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


class Member(HttpUser):
    """A licensee pulling its data: metadata, pages, its usage, sometimes a full export."""

    weight = 20
    wait_time = between(0.5, 3)

    def on_start(self) -> None:
        member = random.choice(keys()["members"])
        self.headers = _bearer(member["api_key"])
        self.dataset = keys()["dataset"]

    @task(2)
    def list_datasets(self) -> None:
        self.client.get("/v1/datasets", headers=self.headers, name="/v1/datasets")

    @task(5)
    def metadata(self) -> None:
        self.client.get(f"/v1/datasets/{self.dataset}", headers=self.headers, name="/v1/datasets/{dataset}")

    @task(10)
    def page_through(self) -> None:
        """A few pages, following the `next` link as a client library would."""
        url: str | None = f"/v1/datasets/{self.dataset}/records?limit={random.choice((100, 100, 500, 1000))}"
        for _ in range(random.randint(1, 5)):
            if url is None:
                break
            with self.client.get(url, headers=self.headers, name="/v1/datasets/{dataset}/records?limit",
                                 catch_response=True) as response:
                if response.status_code == 429:
                    response.success()  # a quota or rate limit doing its job, not a failure
                    return
                nxt = response.links.get("next", {}).get("url")
                url = nxt if nxt else None

    @task(1)
    def usage(self) -> None:
        self.client.get("/v1/usage", headers=self.headers, name="/v1/usage")

    @task(1)
    def export(self) -> None:
        """A full CSV export, streamed and discarded (rare: it reads the whole licensed scope)."""
        if random.random() > 0.1:
            return
        with self.client.get(f"/v1/datasets/{self.dataset}/records?format=csv", headers=self.headers, stream=True,
                             name="/v1/datasets/{dataset}/records (export)", catch_response=True) as response:
            for _ in response.iter_content(1 << 16):
                pass
            if response.status_code == 429:
                response.success()


class VendorAdmin(HttpUser):
    """The vendor: publishes new versions now and then, adjusts licences, looks at its members."""

    weight = 1
    wait_time = between(5, 20)

    def on_start(self) -> None:
        self.headers = _bearer(keys()["vendor_admin_key"])
        self.dataset = keys()["dataset"]

    @task(1)
    def publish(self) -> None:
        """A small version: an hour of populations for a few Tokyo and Osaka meshes."""
        hour = (datetime.now(UTC) - timedelta(hours=random.randint(1, 10_000))).strftime("%Y-%m-%dT%H:00:00Z")
        rows = [f"{random.choice(('13', '14', '27'))},5339{random.randint(1000, 9999)},{hour},{random.randint(0, 50_000)}"
                for _ in range(random.randint(50, 500))]
        body = "prefecture,mesh_code,hour,population\n" + "\n".join(rows) + "\n"
        self.client.post(f"/v1/admin/datasets/{self.dataset}/versions", data=body.encode(),
                         headers={**self.headers, "Content-Type": "text/csv"},
                         name="/v1/admin/datasets/{dataset}/versions")

    @task(2)
    def amend_licence(self) -> None:
        """Raise or lower a quota within values that never refuse the members' traffic."""
        licence = random.choice(keys()["members"])["licence_id"]
        self.client.patch(f"/v1/admin/licences/{licence}",
                          json={"records_per_month": random.randint(10**9, 2 * 10**9)},
                          headers=self.headers, name="/v1/admin/licences/{licence} (amend)")

    @task(3)
    def read(self) -> None:
        self.client.get("/v1/admin/members", headers=self.headers, name="/v1/admin/members")
        self.client.get("/v1/admin/licences", headers=self.headers, name="/v1/admin/licences")


class Compliance(HttpUser):
    """A compliance officer: usage reports (the billing evidence), licences and keys."""

    weight = 2
    wait_time = between(2, 10)

    def on_start(self) -> None:
        self.headers = _bearer(keys()["compliance_key"])

    @task(3)
    def usage_by_day(self) -> None:
        today = datetime.now(UTC).date()
        start = today.replace(day=1)
        self.client.get(f"/v1/admin/usage?from={start}&to={today + timedelta(days=1)}&by=day",
                        headers=self.headers, name="/v1/admin/usage?by=day")

    @task(1)
    def usage_by_month(self) -> None:
        today = datetime.now(UTC).date()
        self.client.get(f"/v1/admin/usage?from={today.replace(month=1, day=1)}&to={today + timedelta(days=1)}&by=month",
                        headers=self.headers, name="/v1/admin/usage?by=month")

    @task(2)
    def licences_and_keys(self) -> None:
        self.client.get("/v1/admin/licences", headers=self.headers, name="/v1/admin/licences")
        self.client.get("/v1/admin/keys", headers=self.headers, name="/v1/admin/keys")
