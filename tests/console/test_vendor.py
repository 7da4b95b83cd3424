"""The vendor screens: what vendor admins and compliance officers see, what only admins may change,
one-time secrets, publish by upload, usage as CSV, escaping, and refusals that change nothing."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import date, timedelta
from typing import Any

import httpx

from gateway import datasets, licences, members, vendors
from gateway.actors import cli_actor
from gateway.columns import to_json
from gateway.demo_data import DEMO_COLUMNS, demo_csv_chunks
from gateway.http.console.vendor_common import PAGE_SIZE
from gateway.runtime import Runtime
from tests.conftest import bearer, client_for
from tests.console.support import console_user, csrf_of, post_form, sign_in
from tests.factories import wait_for_snapshot

SCRIPT = "<script>alert(1)</script>"
SECRET = re.compile(r'<code id="secret"[^>]*>([^<]+)</code>')


@asynccontextmanager
async def signed_in(runtime: Runtime, content: dict[str, Any], role: str) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(runtime) as client:
        answer = await sign_in(client, console_user(content, role))
        assert answer.status_code == 303, answer.text
        yield client


def _ids(content: dict[str, Any]) -> tuple[str, str, str]:
    first = content["members"][0]
    return content["dataset"], first["member_id"], first["licence_id"]


def _pages(content: dict[str, Any]) -> list[str]:
    dataset, member, licence = _ids(content)
    return ["/console/vendor/", "/console/vendor/datasets", f"/console/vendor/datasets/{dataset}",
            "/console/vendor/members", f"/console/vendor/members/{member}", "/console/vendor/licences",
            f"/console/vendor/licences/{licence}", "/console/vendor/usage"]


def _main(page: httpx.Response) -> str:
    return page.text.split('<main id="main" tabindex="-1">')[1].split("</main>")[0]


async def _count(runtime: Runtime, table: str) -> int:
    assert table in ("members", "licences", "credentials", "oauth_clients", "console_users", "dataset_versions")
    return int(await runtime.pool.fetchval(f"SELECT count(*) FROM {table}"))  # a fixed table name, checked above


async def test_every_screen_renders_its_data_for_admins_and_compliance_officers(
        demo_runtime: Runtime, demo_content: dict[str, Any]) -> None:
    expected = {"/console/vendor/": "mobile-location", "/console/vendor/datasets": "mobile-location",
                "/console/vendor/members": "Namba Retail Research", "/console/vendor/licences": "Shibuya Analytics",
                "/console/vendor/usage": "利用状況"}
    for role in ("vendor-admin", "compliance"):
        async with signed_in(demo_runtime, demo_content, role) as client:
            for path in _pages(demo_content):
                page = await client.get(path)
                assert page.status_code == 200, (role, path, page.text)
                assert expected.get(path, "Shibuya Analytics" if "/members/" in path or "/licences/" in path
                                    else "mobile-location") in page.text, (role, path)
                assert page.text.count("<h1") == 1
                changes = re.findall(r'<form method="post" action="(/console/vendor[^"]*)"', page.text)
                assert bool(changes) == (role == "vendor-admin" and path != "/console/vendor/usage"
                                         and path != "/console/vendor/" and path != "/console/vendor/datasets"
                                         and path != "/console/vendor/licences"), (role, path, changes)
            dashboard = await client.get("/console/vendor/")
            assert dashboard.text.count('role="img"') == 3 and "aria-label=" in dashboard.text
            licence = await client.get(_pages(demo_content)[6])
            assert 'id="acceptances"' in licence.text and "demo member key" in licence.text
            users = await client.get("/console/vendor/users")
            grant_form = await client.get("/console/vendor/licences/new")
            if role == "vendor-admin":
                assert users.status_code == grant_form.status_code == 200
                assert "compliance@demo.lpd.example" in users.text
                assert '<select id="member_id" name="member_id" required>' in grant_form.text
            else:
                assert users.status_code == grant_form.status_code == 404


async def test_a_compliance_officer_changes_nothing(demo_runtime: Runtime, demo_content: dict[str, Any]) -> None:
    dataset, member, licence = _ids(demo_content)
    before = {t: await _count(demo_runtime, t) for t in ("members", "licences", "credentials", "oauth_clients",
                                                         "console_users", "dataset_versions")}
    async with signed_in(demo_runtime, demo_content, "compliance") as client:
        csrf = csrf_of(await client.get("/console/vendor/members"))
        for path, data in (("/console/vendor/members", {"name": "new member"}),
                           (f"/console/vendor/members/{member}/keys", {"label": "x"}),
                           (f"/console/vendor/members/{member}/oauth-clients", {"label": "x"}),
                           (f"/console/vendor/members/{member}/suspend", {"reason": "x"}),
                           (f"/console/vendor/datasets/{dataset}/versions/1/withdraw", {"reason": "x"}),
                           (f"/console/vendor/licences/{licence}/revoke", {"reason": "x"}),
                           (f"/console/vendor/licences/{licence}/terminate", {"reason": "x"}),
                           ("/console/vendor/users", {"email": "a@b.example", "role": "compliance"})):
            refused = await client.post(path, data={**data, "csrf": csrf})
            assert refused.status_code == 404 and "見つかりません" in refused.text, path
        upload = await client.post(f"/console/vendor/datasets/{dataset}/versions", data={"csrf": csrf, "mode": "append"},
                                   files={"upload": ("more.csv", b"".join(demo_csv_chunks(5, seed=9)), "text/csv")})
        assert upload.status_code == 404
    after = {t: await _count(demo_runtime, t) for t in before}
    assert after == before
    statuses = await demo_runtime.pool.fetch("SELECT status FROM members UNION ALL SELECT status FROM licences")
    assert {r["status"] for r in statuses} == {"active"}


async def test_another_vendors_objects_are_missing_like_objects_that_do_not_exist(
        demo_runtime: Runtime, demo_content: dict[str, Any]) -> None:
    other = await vendors.create(demo_runtime.writer, cli_actor(), "another vendor")
    actor = cli_actor(other.id)
    theirs = await members.create(demo_runtime.writer, actor, other.id, "their member")
    their_dataset = await datasets.create(demo_runtime.writer, actor, other.id, "their-data", "", to_json(DEMO_COLUMNS),
                                          "prefecture")
    their_licence = await licences.grant(demo_runtime.writer, actor, other.id, theirs.id, their_dataset.id, "terms",
                                         {"partitions": ["*"], "columns": ["prefecture"]})
    async with signed_in(demo_runtime, demo_content, "vendor-admin") as client:
        for kind, their_id in (("members", theirs.id), ("datasets", their_dataset.id), ("licences", their_licence.id)):
            found = await client.get(f"/console/vendor/{kind}/{their_id}")
            missing = await client.get(f"/console/vendor/{kind}/{uuid.uuid4()}")
            malformed = await client.get(f"/console/vendor/{kind}/not-an-id")
            assert found.status_code == missing.status_code == malformed.status_code == 404
            assert _main(found) == _main(missing) == _main(malformed)
        csrf = csrf_of(await client.get("/console/vendor/members"))
        issued = await client.post(f"/console/vendor/members/{theirs.id}/keys", data={"csrf": csrf, "label": "x"})
        assert issued.status_code == 404 and _main(issued) == _main(missing)
        for path in (f"/console/vendor/licences/{their_licence.id}/revoke",
                     f"/console/vendor/datasets/{their_dataset.id}/versions/1/withdraw"):
            refused = await client.post(path, data={"csrf": csrf, "reason": "x"})
            assert refused.status_code == 404 and _main(refused) == _main(missing)
        for page in ("/console/vendor/members", "/console/vendor/licences", "/console/vendor/",
                     "/console/vendor/datasets", "/console/vendor/licences/new", "/console/vendor/users"):
            shown = (await client.get(page)).text
            assert "their member" not in shown and "their-data" not in shown
        # A key of one of our members, revoked from another member's page, is missing there too.
        [ours, second] = [m["member_id"] for m in demo_content["members"]]
        key_id = await demo_runtime.pool.fetchval("SELECT id FROM credentials WHERE member_id = $1", uuid.UUID(ours))
        wrong = await client.post(f"/console/vendor/members/{second}/keys/{key_id}/revoke", data={"csrf": csrf})
        assert wrong.status_code == 404
        assert await demo_runtime.pool.fetchval("SELECT revoked_at FROM credentials WHERE id = $1", key_id) is None


async def test_a_member_granted_a_licence_and_given_a_key_pulls_records_and_the_key_is_shown_once(
        demo_runtime: Runtime, demo_content: dict[str, Any]) -> None:
    dataset = demo_content["dataset"]
    async with signed_in(demo_runtime, demo_content, "vendor-admin") as client:
        created = await post_form(client, "/console/vendor/members", {"name": "Umeda Logistics"})
        assert created.status_code == 303
        member_path = created.headers["location"]
        member_id = member_path.rsplit("/", 1)[1]
        issued = await post_form(client, f"{member_path}/keys", {"label": "batch job"}, page=member_path)
        assert issued.status_code == 200 and issued.headers["cache-control"] == "no-store"
        token = SECRET.search(issued.text)
        assert token, issued.text
        token_text = token.group(1)
        form = await client.get(f"/console/vendor/licences/new?dataset={dataset}")
        assert f'<option value="{member_id}">Umeda Logistics</option>' in form.text
        assert 'name="partitions" value="27"' in form.text and 'name="columns" value="population"' in form.text
        granted = await client.post("/console/vendor/licences", data={
            "csrf": csrf_of(form), "member_id": member_id, "dataset_id": dataset, "partitions": ["27"],
            "columns": ["prefecture", "population"], "records_per_month": "1000", "bytes_per_month": "5000000", "valid_until": "",
            "terms": "第1条 利用目的\r\n統計分析に限る。"})
        assert granted.status_code == 303, granted.text
        licence_path = granted.headers["location"]
        licence_id = licence_path.rsplit("/", 1)[1]
        assert await demo_runtime.pool.fetchval("SELECT bytes_per_month FROM licences WHERE id = $1",
                                                uuid.UUID(licence_id)) == 5_000_000
        shown = await client.get(member_path)
        assert token_text not in shown.text and "batch job" in shown.text and 'id="secret"' not in shown.text
        for path in _pages(demo_content) + [licence_path]:
            assert token_text not in (await client.get(path)).text

        await wait_for_snapshot(demo_runtime, lambda: uuid.UUID(licence_id) in demo_runtime.snapshot.licences
                                and demo_runtime.snapshot.credential(token_text.split("_")[1]) is not None)
        async with client_for(demo_runtime) as api:
            terms = (await api.get(f"/v1/licences/{licence_id}/terms", headers=bearer(token_text))).json()
            assert terms["text"] == "第1条 利用目的\n統計分析に限る。"
            accepted = await api.post(f"/v1/licences/{licence_id}/accept", headers=bearer(token_text),
                                      json={"terms_version": terms["version"], "terms_sha256": terms["sha256"]})
            assert accepted.status_code == 200, accepted.text
            await wait_for_snapshot(demo_runtime,
                                    lambda: demo_runtime.snapshot.licences[uuid.UUID(licence_id)].accepted_terms)
            records = await api.get(f"/v1/datasets/{dataset}/records?limit=5", headers=bearer(token_text))
            assert records.status_code == 200, records.text
        detail = await client.get(licence_path)
        acceptances = detail.text.split('id="acceptances"')[1].split("</table>")[0]
        assert "batch job" in acceptances
        # Revoked from its member's page, the key stops working.
        key_id = await demo_runtime.pool.fetchval("SELECT id FROM credentials WHERE member_id = $1", uuid.UUID(member_id))
        revoked = await post_form(client, f"{member_path}/keys/{key_id}/revoke", {}, page=member_path)
        assert revoked.status_code == 303
        assert await demo_runtime.pool.fetchval("SELECT revoked_at FROM credentials WHERE id = $1", key_id) is not None


async def test_an_oauth_client_secret_is_shown_once(demo_runtime: Runtime, demo_content: dict[str, Any]) -> None:
    member_path = f"/console/vendor/members/{demo_content['members'][1]['member_id']}"
    async with signed_in(demo_runtime, demo_content, "vendor-admin") as client:
        made = await post_form(client, f"{member_path}/oauth-clients", {"label": "nightly"}, page=member_path)
        assert made.status_code == 200
        client_id = re.search(r'<code id="client-id">([^<]+)</code>', made.text)
        secret = SECRET.search(made.text)
        assert client_id and secret
        again = await client.get(member_path)
        assert client_id.group(1) in again.text and secret.group(1) not in again.text


async def test_a_version_published_by_upload_and_then_withdrawn(
        demo_runtime: Runtime, demo_content: dict[str, Any]) -> None:
    dataset_path = f"/console/vendor/datasets/{demo_content['dataset']}"
    async with signed_in(demo_runtime, demo_content, "vendor-admin") as client:
        page = await client.get(dataset_path)
        assert 'data-progress="upload-progress"' in page.text and 'enctype="multipart/form-data"' in page.text
        body = b"".join(demo_csv_chunks(40, seed=11))
        published = await client.post(f"{dataset_path}/versions", data={"csrf": csrf_of(page), "mode": "append"},
                                      files={"upload": ("more.csv", body, "text/csv")})
        assert published.status_code == 303, published.text
        shown = await client.get(published.headers["location"])
        versions = shown.text.split("<tbody>")[1].split("</tbody>")[0]
        assert '<td class="num">2</td>' in versions and '<td class="num">40</td>' in versions
        # A file the dataset cannot hold: the form again, with the gateway's words; nothing published.
        bad = await client.post(f"{dataset_path}/versions", data={"csrf": csrf_of(page), "mode": "append"},
                                files={"upload": ("bad.csv", b"prefecture,oops\n13,1\n", "text/csv")})
        assert bad.status_code == 400 and 'role="alert"' in bad.text and 'name="upload"' in bad.text
        none = await client.post(f"{dataset_path}/versions", data={"csrf": csrf_of(page), "mode": "append"})
        assert none.status_code == 400
        # One that says it is larger than an upload may be is refused before its body is read.
        huge = client.build_request("POST", f"{dataset_path}/versions", data={"csrf": csrf_of(page)},
                                    files={"upload": ("huge.csv", body, "text/csv")})
        huge.headers["content-length"] = str(demo_runtime.config.max_upload_bytes + 10**6)
        too_large = await client.send(huge)
        assert too_large.status_code == 413 and "大きすぎます" in too_large.text
        assert await _count(demo_runtime, "dataset_versions") == 2
        blank = await post_form(client, f"{dataset_path}/versions/2/withdraw", {"reason": "  "}, page=dataset_path)
        assert blank.status_code == 400 and "取り下げの理由" in blank.text
        withdrawn = await post_form(client, f"{dataset_path}/versions/2/withdraw", {"reason": "誤ったファイル"},
                                    page=dataset_path)
        assert withdrawn.status_code == 303
        after = await client.get(dataset_path)
        assert "誤ったファイル" in after.text
    found = await datasets.get(demo_runtime.pool, uuid.UUID(demo_content["vendor_id"]), uuid.UUID(demo_content["dataset"]))
    assert [(v.version, v.live) for v in found.versions] == [(1, True), (2, False)]


async def test_usage_downloads_as_csv_for_excel(demo_runtime: Runtime, demo_content: dict[str, Any]) -> None:
    first = demo_content["members"][0]
    async with client_for(demo_runtime) as api:
        pulled = await api.get(f"/v1/datasets/{demo_content['dataset']}/records?limit=7", headers=bearer(first["api_key"]))
        assert pulled.status_code == 200, pulled.text
        outside = await api.get(f"/v1/datasets/{demo_content['dataset']}/records?partition=27",
                                headers=bearer(first["api_key"]))
        assert outside.status_code == 403
    for _ in range(200):  # the audit writer commits the delivery's usage with its event, a moment later
        if await demo_runtime.pool.fetchval("SELECT coalesce(sum(records), 0) FROM usage_daily") >= 7 \
                and await demo_runtime.pool.fetchval("SELECT count(*) FROM audit_events WHERE outcome = 'deny'"):
            break
        await asyncio.sleep(0.02)
    async with signed_in(demo_runtime, demo_content, "compliance") as client:
        answer = await client.get("/console/vendor/usage.csv")
        page = await client.get("/console/vendor/usage")
        dashboard = await client.get("/console/vendor/")
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/csv")
    assert "attachment" in answer.headers["content-disposition"]
    assert answer.content.startswith(b"\xef\xbb\xbf")
    lines = answer.content.decode("utf-8-sig").split("\r\n")
    assert lines[0] == "day,member_id,member,dataset_id,dataset,licence_id,requests,records,bytes,over_soft_quota"
    assert any(",Shibuya Analytics," in line and ",7," in line for line in lines[1:])
    assert "Shibuya Analytics" in page.text and page.text.count('role="img"') == 2
    assert "Shibuya Analytics" in dashboard.text.split('id="deliveries"')[1]
    denials = dashboard.text.split('id="denials"')[1].split("</table>")[0]
    assert "partition &#39;27&#39; is outside your licence" in denials and '<td class="num">1</td>' in denials


async def test_a_name_holding_a_script_is_escaped_on_every_vendor_page(
        demo_runtime: Runtime, demo_content: dict[str, Any]) -> None:
    async with signed_in(demo_runtime, demo_content, "vendor-admin") as client:
        created = await post_form(client, "/console/vendor/members", {"name": SCRIPT})
        assert created.status_code == 303
        member_id = created.headers["location"].rsplit("/", 1)[1]
        form = await client.get("/console/vendor/licences/new")
        granted = await client.post("/console/vendor/licences", data={
            "csrf": csrf_of(form), "member_id": member_id, "dataset_id": demo_content["dataset"],
            "partitions": ["13"], "terms": SCRIPT})
        assert granted.status_code == 303, granted.text
        await post_form(client, "/console/vendor/users", {"email": "x@demo.lpd.example", "role": "member",
                                                          "member_id": member_id, "display_name": SCRIPT})
        await post_form(client, f"/console/vendor/datasets/{demo_content['dataset']}/versions/1/withdraw",
                        {"reason": SCRIPT}, page=f"/console/vendor/datasets/{demo_content['dataset']}")
        paths = [*_pages(demo_content), created.headers["location"], granted.headers["location"],
                 "/console/vendor/users", "/console/vendor/licences/new"]
        for path in paths:
            page = await client.get(path)
            assert page.status_code == 200, path
            assert SCRIPT not in page.text, path
        for path in ("/console/vendor/members", created.headers["location"], granted.headers["location"],
                     "/console/vendor/licences", "/console/vendor/users", "/console/vendor/licences/new"):
            assert "&lt;script&gt;alert(1)&lt;/script&gt;" in (await client.get(path)).text, path


async def test_bad_input_is_shown_again_with_a_message_and_changes_nothing(
        demo_runtime: Runtime, demo_content: dict[str, Any]) -> None:
    dataset, member, licence = _ids(demo_content)
    before = {t: await _count(demo_runtime, t) for t in ("members", "licences", "console_users", "credentials")}
    async with signed_in(demo_runtime, demo_content, "vendor-admin") as client:
        blank = await post_form(client, "/console/vendor/members", {"name": " padded "})
        assert blank.status_code == 400 and 'role="alert"' in blank.text and 'value=" padded "' in blank.text
        form = await client.get("/console/vendor/licences/new")
        second = demo_content["members"][1]["member_id"]
        no_scope = await client.post("/console/vendor/licences", data={
            "csrf": csrf_of(form), "member_id": second, "dataset_id": dataset, "terms": "keep what I typed",
            "records_per_month": "many"})
        assert no_scope.status_code == 400 and "keep what I typed" in no_scope.text and 'role="alert"' in no_scope.text
        no_partition = await client.post("/console/vendor/licences", data={
            "csrf": csrf_of(form), "member_id": second, "dataset_id": dataset, "terms": "t", "partitions": ["99"]})
        assert no_partition.status_code == 400 and "holds partition(s) 99" in no_partition.text
        email = await post_form(client, "/console/vendor/users", {"email": "not an email", "role": "compliance"})
        assert email.status_code == 400 and 'value="not an email"' in email.text
        long_label = await post_form(client, f"/console/vendor/members/{member}/keys", {"label": "x" * 201},
                                     page=f"/console/vendor/members/{member}")
        assert long_label.status_code == 400
        terminate = await post_form(client, f"/console/vendor/licences/{licence}/terminate", {"reason": ""},
                                    page=f"/console/vendor/licences/{licence}")
        assert terminate.status_code == 400 and 'role="alert"' in terminate.text
        amend = await post_form(client, f"/console/vendor/licences/{licence}/amend",
                                {"partitions": "13", "records_per_month": "-5", "terms": "x"},
                                page=f"/console/vendor/licences/{licence}")
        assert amend.status_code == 400
    assert {t: await _count(demo_runtime, t) for t in before} == before
    assert await demo_runtime.pool.fetchval("SELECT status FROM licences WHERE id = $1", uuid.UUID(licence)) == "active"


async def test_console_users_are_created_with_a_password_shown_once_and_suspended(
        demo_runtime: Runtime, demo_content: dict[str, Any]) -> None:
    member = demo_content["members"][0]["member_id"]
    async with signed_in(demo_runtime, demo_content, "vendor-admin") as client:
        made = await post_form(client, "/console/vendor/users", {"email": "sato@demo.lpd.example", "role": "member",
                                                                 "member_id": member, "display_name": "佐藤"})
        assert made.status_code == 200
        password = SECRET.search(made.text)
        assert password
        listed = await client.get("/console/vendor/users")
        assert "sato@demo.lpd.example" in listed.text and password.group(1) not in listed.text
        user_id = await demo_runtime.pool.fetchval("SELECT id FROM console_users WHERE email = 'sato@demo.lpd.example'")
        suspended = await post_form(client, f"/console/vendor/users/{user_id}/suspend", {}, page="/console/vendor/users")
        assert suspended.status_code == 303
        assert "佐藤" in (await client.get(f"/console/vendor/members/{member}")).text
    assert await demo_runtime.pool.fetchval("SELECT status FROM console_users WHERE id = $1", user_id) == "suspended"


async def test_a_licence_is_amended_suspended_resumed_and_terminated_and_a_member_suspended(
        demo_runtime: Runtime, demo_content: dict[str, Any]) -> None:
    _, member, licence = _ids(demo_content)
    path = f"/console/vendor/licences/{licence}"
    async with signed_in(demo_runtime, demo_content, "vendor-admin") as client:
        amended = await post_form(client, f"{path}/amend", {"partitions": ["13"], "records_per_month": "1000", "bytes_per_month": "",
                                                             "valid_until": "2030-04-01", "terms": "新しい規約 v2"}, page=path)
        assert amended.status_code == 303, amended.text
        shown = await client.get(path)
        acceptances = shown.text.split('id="acceptances"')[1].split("</table>")[0]
        assert acceptances.count("<tr>") == 3 and "未同意" in acceptances and "新しい規約 v2" in shown.text
        for action in ("suspend", "resume"):
            assert (await post_form(client, f"{path}/{action}", {"reason": "確認のため"}, page=path)).status_code == 303
        terminated = await post_form(client, f"{path}/terminate", {"grounds": "breach", "reason": "第三者への開示",
                                                                    "attestation_due": (date.today() + timedelta(days=60)).isoformat()}, page=path)
        assert terminated.status_code == 303, terminated.text
        assert f'action="/console/vendor/licences/{licence}/amend"' not in (await client.get(path)).text
        member_path = f"/console/vendor/members/{member}"
        assert (await post_form(client, f"{member_path}/suspend", {"reason": "支払い遅延"}, page=member_path)).status_code == 303
        assert "支払い遅延" in (await client.get(member_path)).text
    row = await demo_runtime.pool.fetchrow(
        "SELECT status, records_per_month, bytes_per_month, terms_version FROM licences WHERE id = $1", uuid.UUID(licence))
    assert (row["status"], row["records_per_month"], row["bytes_per_month"], row["terms_version"]) == (
        "revoked", 1000, None, 2)
    assert await demo_runtime.pool.fetchval("SELECT grounds FROM terminations WHERE licence_id = $1",
                                            uuid.UUID(licence)) == "breach"
    assert await demo_runtime.pool.fetchval("SELECT status FROM members WHERE id = $1", uuid.UUID(member)) == "suspended"


async def test_long_lists_come_a_page_at_a_time(demo_runtime: Runtime, demo_content: dict[str, Any]) -> None:
    vendor = uuid.UUID(demo_content["vendor_id"])
    for i in range(PAGE_SIZE):
        await members.create(demo_runtime.writer, cli_actor(vendor), vendor, f"zz member {i:03}")
    async with signed_in(demo_runtime, demo_content, "compliance") as client:
        first = await client.get("/console/vendor/members")
        rows = re.findall(r'<a href="/console/vendor/members/([0-9a-f-]{36})">', first.text)
        assert len(rows) == PAGE_SIZE and "Namba Retail Research" in first.text and "zz member 099" not in first.text
        more = re.search(r'href="(/console/vendor/members\?after=[0-9a-f-]{36})"', first.text)
        assert more
        second = await client.get(more.group(1))
        rest = re.findall(r'<a href="/console/vendor/members/([0-9a-f-]{36})">', second.text)
        assert len(rest) == 2 and "zz member 098" in second.text and "zz member 099" in second.text
        assert not set(rows) & set(rest) and "?after=" not in second.text
        assert (await client.get("/console/vendor/members?after=nonsense")).status_code == 404
