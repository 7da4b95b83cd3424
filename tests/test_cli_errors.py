"""A command line that never shows a traceback: every command, run with bad input in a subprocess.

The commands are found by walking the parser (`gateway.cli.walk`), so a command added later is covered
without editing this file. A mistake is one line on stderr and exit status 1; argparse's usage errors
keep status 2. Where no gateway exists, a command that needs one says so and creates nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import asyncpg
import pytest

from gateway import cli, datasets, members, vendors
from gateway.actors import cli_actor
from gateway.cli_audit import path_arg
from tests import REPOSITORY
from tests.conftest import TEST_MASTER_KEY, open_runtime

GATEWAY = [sys.executable, "-m", "gateway.cli"]
ROOT = REPOSITORY
VENDOR, MEMBER, DATASET = "Errors Vendor", "Errors Member", "counts"


def commands() -> list[tuple[list[str], argparse.ArgumentParser]]:
    """Every command that runs something (not a group), with the words that name it."""
    found = [(words, parser) for words, parser in cli.walk(cli.build_parser()) if parser._subparsers is None]
    names = {" ".join(words) for words, _ in found}
    assert {"serve", "init", "vendor create", "dataset publish", "licence grant", "audit check"} <= names, names
    return found


def groups() -> list[list[str]]:
    return [words for words, parser in cli.walk(cli.build_parser()) if parser._subparsers is not None]


def _arguments(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions
            if not isinstance(a, argparse._HelpAction | argparse._SubParsersAction | argparse._StoreConstAction)]


def _text(action: argparse.Action) -> bool:
    """Takes free text (a name, an id, a path): "" is a value argparse lets through to the command."""
    return action.choices is None and action.type in (None, path_arg) and action.nargs is None


def _valid(action: argparse.Action) -> str:
    """A value argparse accepts for `action` (not necessarily one the command accepts)."""
    if action.choices is not None:
        return str(next(iter(action.choices)))
    if action.type in (None, path_arg):
        return "x"
    for candidate in ("2026-04-01", "1", "x"):
        try:
            action.type(candidate)  # type: ignore[misc, operator]
        except (argparse.ArgumentTypeError, TypeError, ValueError):
            continue
        return candidate
    raise AssertionError(f"no valid value known for {action.option_strings or action.dest}")


def argv(words: list[str], parser: argparse.ArgumentParser, value: dict[str, str] | None = None,
         text: str | None = None) -> list[str]:
    """`words` and every required argument: `value` by dest, else `text` for a text argument, else a valid one."""
    result = list(words)
    for action in _arguments(parser):
        if action.option_strings and not action.required:
            continue
        given = (value or {}).get(action.dest)
        if given is None:
            given = text if text is not None and _text(action) else _valid(action)
        result += [action.option_strings[0], given] if action.option_strings else [given]
    return result


def clean_env(**settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env["PYTHONPATH"] = str(ROOT)
    return {**env, **settings}


def run(args: list[str], env: dict[str, str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(GATEWAY + args, env=env, cwd=cwd, capture_output=True, text=True, timeout=120,
                          check=False)


def run_all(runs: Iterable[tuple[list[str], dict[str, str], Path | None]]) -> list[subprocess.CompletedProcess[str]]:
    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(lambda r: run(*r), runs))


def assert_clean_failure(done: subprocess.CompletedProcess[str], *expected: str) -> None:
    """Status 1 or 2, no traceback; at status 1 one line on stderr; each of `expected` in it."""
    shown = f"gateway {' '.join(map(str, done.args[3:]))} -> {done.returncode}\n{done.stderr}"
    assert "Traceback" not in done.stderr, shown
    assert done.returncode in (1, 2), shown
    if done.returncode == 1:
        assert done.stderr.endswith("\n") and done.stderr.count("\n") == 1, shown
        assert done.stderr.startswith("gateway: "), shown
    for text in expected:
        assert text in done.stderr, shown


# -- without a database ----------------------------------------------------------------------------


def test_every_command_says_a_bad_setting_in_one_line(tmp_path: Path) -> None:
    """GATEWAY_PORT is wrong: every command (serve, init and demo too) says so and makes nothing."""
    runs = [(argv(words, parser), clean_env(GATEWAY_PORT="eighty"), tmp_path) for words, parser in commands()
            if not parser.get_default("offline")]
    for done in run_all(runs):
        assert_clean_failure(done, "GATEWAY_PORT")
        assert done.returncode == 1
    assert list(tmp_path.iterdir()) == []


def test_a_command_where_no_gateway_is_says_where_it_looked_and_creates_nothing(tmp_path: Path) -> None:
    """`cd elsewhere && gateway audit check` used to make an empty gateway there and answer "ok": true."""
    needing = [(words, parser) for words, parser in commands()
               if not parser.get_default("makes_gateway") and not parser.get_default("offline")]
    assert ["audit", "check"] in [words for words, _ in needing]
    results = run_all((argv(words, parser), clean_env(), tmp_path) for words, parser in needing)
    for done in results:
        assert_clean_failure(done, f"no gateway in {tmp_path / '.gateway'}", "gateway init")
        assert done.returncode == 1
    assert list(tmp_path.iterdir()) == []
    # GATEWAY_HOME named explicitly: the same, naming that folder.
    home = tmp_path / "elsewhere"
    done = run(["audit", "check"], clean_env(GATEWAY_HOME=str(home)), tmp_path)
    assert_clean_failure(done, f"no gateway in {home}")
    assert done.returncode == 1 and list(tmp_path.iterdir()) == []


def test_offline_verify_names_a_missing_bundle_or_checkpoint_in_one_line(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.zip")
    bundle = tmp_path / "bundle.zip"
    bundle.write_bytes(b"PK")
    for args, expected in [
        (["audit", "verify", missing], "does not exist"),
        (["audit", "verify", str(tmp_path)], "is a folder"),
        (["audit", "verify", str(bundle), "--trusted-checkpoint", missing], "--trusted-checkpoint file"),
    ]:
        done = run(args, clean_env(), tmp_path)
        assert_clean_failure(done, expected)
        assert done.returncode == 1 and done.stdout == ""


def test_a_fault_of_the_gateway_is_one_line_naming_the_saved_traceback(tmp_path: Path) -> None:
    """A real bug is not hidden: status 70, the exception named, its traceback in a file (and no traceback shown)."""
    bundle = tmp_path / "bundle.zip"
    bundle.write_bytes(b"PK")
    script = ("import sys; from gateway import cli, cli_audit\n"
              "def broken(*args, **kwargs): raise KeyError('a bug')\n"
              "cli_audit.verify_bundle = broken\n"
              f"sys.exit(cli.main(['audit', 'verify', {str(bundle)!r}]))\n")
    done = subprocess.run([sys.executable, "-c", script], env=clean_env(TMPDIR=str(tmp_path)), capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == cli.EXIT_BUG and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.count("\n") == 1 and "KeyError: 'a bug'" in done.stderr, done.stderr
    [saved] = tmp_path.glob("gateway-error-*.txt")
    assert str(saved) in done.stderr and "Traceback" in saved.read_text() and "broken" in saved.read_text()


# -- against a gateway -----------------------------------------------------------------------------


@pytest.fixture
async def gateway_env(dsn: str, tmp_path: Path) -> AsyncIterator[dict[str, str]]:
    """A gateway with a vendor, a dataset with one version, and a member; the CLI's environment for it."""
    home = tmp_path / "home"
    runtime = await open_runtime(dsn, home)
    try:
        vendor = await vendors.create(runtime.writer, cli_actor(), VENDOR)
        dataset = await datasets.create(runtime.writer, cli_actor(vendor.id), vendor.id, DATASET, "",
                                        [{"name": "area", "type": "text"}, {"name": "n", "type": "integer"}], "area")

        async def body() -> AsyncIterator[bytes]:
            yield b"area,n\nnorth,1\n"

        await datasets.publish(runtime.writer, cli_actor(vendor.id), dataset, body(), "csv", max_bytes=1 << 20)
        await members.create(runtime.writer, cli_actor(vendor.id), vendor.id, MEMBER)
    finally:
        await runtime.close()
    yield clean_env(GATEWAY_DATABASE_URL=dsn, GATEWAY_MASTER_KEY=TEST_MASTER_KEY, GATEWAY_HOME=str(home))


# Arguments that any value is a valid value of: a name for something new, a label, a note, a file to write,
# a witness's folder (made on first use).
ANY_TEXT = frozenset({"name", "label", "description", "reason", "output", "state", "contact_name"})


def test_every_argument_given_a_value_that_names_nothing_fails_in_one_line(gateway_env: dict[str, str],
                                                                            tmp_path: Path) -> None:
    """Each argument of each command in turn gets "not-a-value" (and a file "", the current folder), the
    others a value that works; and each command an unknown option, each group no command (status 2).

    A command added later is covered as it is; an argument of it that takes any text belongs in ANY_TEXT.
    """
    good = {"vendor": VENDOR, "member": MEMBER, "dataset": DATASET}
    runs: list[tuple[list[str], dict[str, str], Path | None]] = []
    usage = []
    for words, parser in commands():
        usage.append(len(runs))
        runs.append(([*argv(words, parser, good), "--no-such-option"], gateway_env, tmp_path))
        for action in _arguments(parser):
            if action.choices is not None or action.dest in ANY_TEXT:
                continue
            for bad in ("not-a-value", "") if action.type is path_arg else ("not-a-value",):
                args = argv(words, parser, {**good, action.dest: bad})
                if action.option_strings and not action.required:
                    args += [action.option_strings[0], bad]
                runs.append((args, gateway_env, tmp_path))
    for words in groups():
        usage.append(len(runs))
        runs.append((words, gateway_env, tmp_path))
    assert len(runs) > 80
    for number, done in enumerate(run_all(runs)):
        assert_clean_failure(done)
        assert number not in usage or done.returncode == 2, done.stderr


def test_the_mistakes_that_printed_tracebacks(gateway_env: dict[str, str], tmp_path: Path) -> None:
    """The cases named in the issue, and the others found by trying every command."""
    missing, folder = str(tmp_path / "missing"), str(tmp_path)
    bad_json, terms, nul_terms = tmp_path / "bad.json", tmp_path / "terms.txt", tmp_path / "nul.txt"
    bad_json.write_text("{not json")
    terms.write_text("Use internally only.")
    nul_terms.write_bytes(b"terms\x00")
    grant = ["licence", "grant", "--vendor", VENDOR, "--member", MEMBER, "--dataset", DATASET]
    create = ["dataset", "create", "--vendor", VENDOR, "--name", "other", "--partition-column", "area"]
    publish = ["dataset", "publish", "--vendor", VENDOR, DATASET]
    amend = ["licence", "amend", "--vendor", VENDOR, "3f1c2a9e-0000-4000-8000-000000000000"]
    cases: list[tuple[list[str], int, str]] = [
        ([*grant, "--terms", str(terms)], 1, "missing field(s): partitions, columns"),  # was NotNullViolationError
        ([*grant, "--terms", str(terms), "--partitions", "north"], 1, "missing field(s): columns; give --columns"),
        ([*grant, "--terms", missing, "--partitions", "north", "--columns", "n"], 1, "does not exist"),
        ([*grant, "--terms", folder, "--partitions", "north", "--columns", "n"], 1, "is a folder"),
        ([*grant, "--terms", str(nul_terms), "--partitions", "north", "--columns", "n"], 1, "NUL"),
        ([*grant, "--terms", str(terms), "--partitions", "north", "--columns", "n", "--valid-from", "soon"], 2,
         "RFC 3339"),
        ([*publish, missing], 1, "does not exist"),
        ([*publish, folder], 1, "is a folder"),
        ([*create, "--columns", missing], 1, "does not exist"),
        ([*create, "--columns", folder], 1, "is a folder"),
        ([*create, "--columns", str(bad_json)], 1, "is not valid JSON"),
        (["audit", "export", "--vendor", VENDOR, "--from", "2026-04-01", "--to", "2026-05-01", "-o",
          "/nonexistent/x.zip"], 1, "does not exist"),
        (["audit", "export", "--vendor", VENDOR, "--from", "2026-04-01", "--to", "2026-05-01", "-o", folder], 1,
         "is a folder"),
        (["vendor", "create", ""], 1, "name must be 1 to 200 characters"),  # was CheckViolationError
        (["vendor", "create", "v" * 201], 1, "name must be 1 to 200 characters"),
        ([*amend], 1, "nothing to change; give at least one of --terms"),
        ([*amend, "--valid-until", "2030-01-01", "--no-valid-until"], 2, "not allowed with argument"),
        ([*amend, "--soft-quotas", "--hard-quotas"], 2, "not allowed with argument"),
        ([*amend, "--no-rate-limit", "--burst", "5"], 1, "--burst is part of the rate limit"),
        (["member", "amend", "--vendor", VENDOR, MEMBER], 1, "nothing to change; give at least one of --name"),
        (["member", "amend", "--vendor", VENDOR, MEMBER, "--contact-email", "a@b.jp", "--no-contact-email"], 2,
         "not allowed with argument"),
        (["member", "resume", "--vendor", VENDOR, MEMBER], 1, "this member is active already"),
        (["dataset", "amend", "--vendor", VENDOR, DATASET], 1, "nothing to change; give at least one of --name"),
        (["dataset", "amend", "--vendor", VENDOR, DATASET, "--name", DATASET], 1, "nothing to change"),
        ([*amend, "--terms", missing], 1, "does not exist"),
        ([*amend, "--records-per-month", "1" + "0" * 20], 2, "whole number"),  # was DataError (int64)
        ([*amend, "--requests-per-second", "nan"], 2, "positive number"),  # was stored as NaN
        (["key", "issue", "--vendor", VENDOR, "--kind", "member", "--member", MEMBER, "--expires-at", "later"], 2,
         "RFC 3339"),  # was MomentError
        (["key", "issue", "--vendor", VENDOR, "--kind", "member"], 1, "member keys need --member"),
        (["key", "revoke", "--vendor", VENDOR, "not-an-id"], 1, "is not an id"),
        (["key", "issue", "--vendor", VENDOR, "--kind", "vendor"], 1, "vendor admin keys need a label"),
        (["key", "issue", "--vendor", VENDOR, "--kind", "vendor", "--label", "x", "--member", MEMBER], 1,
         "compliance and vendor keys take none"),
        (["key", "rotate", "--vendor", VENDOR, "not-an-id"], 1, "is not an id"),
        (["key", "rotate", "--vendor", VENDOR, "3f1c2a9e-0000-4000-8000-000000000000"], 1, "no such key"),
        (["key", "rotate", "--vendor", VENDOR, "3f1c2a9e-0000-4000-8000-000000000000", "--overlap=-1h"], 1,
         "overlap_seconds must be a whole number of seconds from 0"),
        (["key", "rotate", "--vendor", VENDOR, "3f1c2a9e-0000-4000-8000-000000000000", "--overlap", "soon"], 2,
         "is not a duration"),
        (["vendor", "create", VENDOR], 1, "gateway key issue --vendor 'Errors Vendor' --kind vendor"),
        (["vendor", "create", "Another", "--label", ""], 1, "vendor admin keys need a label"),
        (["keys", "rotate", "--purpose", "jwt", "--overlap-seconds", "nan"], 2, "seconds"),  # was ValueError
        (["keys", "rotate", "--purpose", "jwt", "--overlap-seconds", "-5"], 2, "gateway keys retire"),
        (["usage", "report", "--vendor", VENDOR, "--from", "April"], 1, "--from and --to are dates"),
    ]
    runs = [(args, gateway_env, tmp_path) for args, _, _ in cases]
    # Not UTF-8 (a terminal in another encoding): refused before it reaches PostgreSQL (was DataError).
    runs.append(([os.fsdecode(b"vendor"), os.fsdecode(b"create"), os.fsdecode(b"\xff")], gateway_env, tmp_path))
    cases.append(([], 2, "not valid UTF-8"))
    # The database is not there, or its master key is not.
    runs.append((["keys", "list"], {**gateway_env, "GATEWAY_DATABASE_URL": "postgresql://gateway@127.0.0.1:1/none"},
                 tmp_path))
    cases.append(([], 1, "cannot connect to the database at GATEWAY_DATABASE_URL"))
    runs.append((["keys", "list"], {k: v for k, v in gateway_env.items() if k != "GATEWAY_MASTER_KEY"}, tmp_path))
    cases.append(([], 1, "no master key"))
    for done, (_, status, expected) in zip(run_all(runs), cases, strict=True):
        assert_clean_failure(done, expected)
        assert done.returncode == status, done.stderr
    assert not (tmp_path / "home" / "master.key").exists()  # no new master key made for the existing database


async def test_ctrl_c_during_publish_is_one_line_and_publishes_nothing(gateway_env: dict[str, str], dsn: str,
                                                                      tmp_path: Path) -> None:
    """The file is a pipe this test writes, so the upload is surely under way, and unfinished, at Ctrl-C."""
    pipe = tmp_path / "upload.csv"
    os.mkfifo(pipe)
    process = subprocess.Popen(GATEWAY + ["dataset", "publish", "--vendor", VENDOR, DATASET, str(pipe)],  # noqa: ASYNC220
                               env=gateway_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    conn = await asyncpg.connect(dsn)
    writer = -1
    try:
        deadline = time.monotonic() + 60
        while writer < 0:  # the pipe opens for writing once the command has opened it for reading
            try:
                writer = os.open(pipe, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:
                assert process.poll() is None and time.monotonic() < deadline, process.communicate()
                await asyncio.sleep(0.05)
        os.set_blocking(writer, True)
        # More than two of the command's reads (1 MiB each): its third waits for the rest of the file.
        os.write(writer, b"area,n\n" + b"north,1\n" * 300_000)
        while not await conn.fetchval("SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'COPY%' "
                                      "AND state = 'active' AND datname = current_database()"):
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()
            await asyncio.sleep(0.05)
        process.send_signal(signal.SIGINT)
        await asyncio.sleep(0.5)
        os.close(writer)  # the end of the file, after Ctrl-C: the command must not publish what it read
        writer = -1
        stdout, stderr = await asyncio.to_thread(process.communicate, timeout=60)
        versions = await conn.fetchval("SELECT count(*) FROM dataset_versions")
    finally:
        if writer >= 0:
            os.close(writer)
        if process.poll() is None:
            process.kill()
        await conn.close()
    assert process.returncode == cli.EXIT_INTERRUPTED and "Traceback" not in stderr, stderr
    assert stderr.count("\n") == 1 and "no version was published" in stderr, stderr
    assert stdout == "" and versions == 1  # the one the fixture published, and no other
