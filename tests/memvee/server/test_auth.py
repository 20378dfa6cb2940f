"""Bearer tokens: a wrong or missing token is 401, a token scoped to one tenant's user-id
prefix never reaches another tenant's users (403, nothing written) over the HTTP API or
MCP, and no token ever reaches the log. Off loopback, tokens are required."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from memvee import InvalidInputError
from memvee._server.auth import Grant, TokenBook
from tests.support.mcp_clients import call, failure, http_session
from tests.support.raw_http import head_body
from tests.support.server_process import MEMVEE, ServerProcess, server_env

ACME = "acme-kU3nR8vQ2wXe7LpZ5tYc9HbM4jDf6GsA"
GLOBEX = "globex-Qm7Vx2Nc8Rb5Kt3Wz9Hp4Ly6Fd1Js0Ge"
ADMIN = "admin-Tn5Bq8Xw2Mc7Rv4Kz9Lp3Hs6Yd1Gf0Ja"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server with two tenant tokens (MEMVEE_API_TOKENS) and an admin one (a file)."""
    folder = tmp_path_factory.mktemp("auth")
    tokens_file = folder / "tokens"
    tokens_file.write_text(f"# operators\n{ADMIN}\n")
    args = ["--db", str(folder / "memvee.db"), "--no-auto-process", "--lexical"]
    args += ["--tokens-file", str(tokens_file)]
    env = {"MEMVEE_API_TOKENS": f"{ACME}:acme:, {GLOBEX}:globex:"}
    with ServerProcess(folder / "server.log", args, env) as running:
        yield running


def client(server: ServerProcess, token: str | None) -> httpx.Client:
    headers = {} if token is None else {"authorization": f"Bearer {token}"}
    return httpx.Client(base_url=server.url, headers=headers, timeout=30)


def say(http: httpx.Client, user: str) -> httpx.Response:
    exchange = {"user_message": "I live in Oslo.", "assistant_message": "ok"}
    return http.post(f"/v1/users/{user}/exchanges", json=exchange)


def test_a_missing_or_wrong_token_is_401_but_probes_are_open(server: ServerProcess) -> None:
    with client(server, None) as anonymous, client(server, "not-a-token-at-all") as wrong:
        assert anonymous.get("/healthz").status_code == 200
        assert anonymous.get("/readyz").status_code == 200
        missing = say(anonymous, "acme:alice")
        bad = say(wrong, "acme:alice")
        mcp = anonymous.post("/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "ping"})

    assert missing.status_code == 401
    assert missing.headers["www-authenticate"].startswith("Bearer")
    assert missing.json()["error"] == "unauthorized"
    assert bad.status_code == 401
    assert mcp.status_code == 401
    with client(server, ADMIN) as admin:
        assert admin.get("/v1/users/acme:alice").status_code == 404


def test_head_asks_for_the_token_and_scope_that_get_does(server: ServerProcess) -> None:
    """A HEAD is answered as its GET would be, refusals too, without the body."""
    with (
        client(server, None) as anonymous,
        client(server, GLOBEX) as globex,
        client(server, ACME) as acme,
    ):
        assert say(acme, "acme:head").status_code == 201
        path = "/v1/users/acme:head"
        missing, got_missing = anonymous.head(path), anonymous.get(path)
        refused = globex.head(path)
        allowed, got = acme.head(path), acme.get(path)

    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == got_missing.headers["www-authenticate"]
    assert refused.status_code == 403
    assert allowed.status_code == 200
    assert allowed.headers["content-length"] == got.headers["content-length"]
    for token in (None, GLOBEX, ACME):  # httpx reads no body after a HEAD: the socket tells
        sent = {} if token is None else {"authorization": f"Bearer {token}"}
        assert head_body(server.url, path, sent) == b"", token


def test_a_tenant_token_never_reaches_another_tenants_users(server: ServerProcess) -> None:
    with client(server, ACME) as acme, client(server, GLOBEX) as globex:
        assert say(acme, "acme:alice").status_code == 201
        assert say(globex, "globex:bob").status_code == 201

        reads = [
            globex.get("/v1/users/acme:alice"),
            globex.get("/v1/users/acme:alice/knowledge"),
            globex.post("/v1/users/acme:alice/retrieve", json={"query": "Oslo"}),
            acme.get("/v1/users/globex:bob/messages"),
        ]
        writes = [
            say(globex, "acme:alice"),
            globex.post("/v1/users/acme:alice/flush"),
            globex.delete("/v1/users/acme:alice"),
            say(acme, "globex:mallory"),
        ]

    for answer in reads + writes:
        assert answer.status_code == 403, answer.request.url
        assert answer.json()["error"] == "forbidden"
    with client(server, ADMIN) as admin:
        assert admin.get("/v1/users/acme:alice").json()["message_count"] == 2
        assert admin.get("/v1/users/globex:bob").json()["message_count"] == 2
        assert admin.get("/v1/users/globex:mallory").status_code == 404


async def test_mcp_over_http_is_scoped_by_the_same_tokens(server: ServerProcess) -> None:
    async with http_session(server.url, GLOBEX) as session:
        refused = await failure(
            session, "remember", user_id="acme:carol", user_message="I live in Rome."
        )
        peek = await failure(session, "list_memories", user_id="acme:alice")
        stored = await call(session, "remember", user_id="globex:carol", user_message="Hi.")

    assert "forbidden" in refused
    assert "forbidden" in peek
    assert len(stored["message_ids"]) == 1
    with client(server, ADMIN) as admin:
        assert admin.get("/v1/users/acme:carol").status_code == 404


def test_no_token_reaches_the_log(server: ServerProcess) -> None:
    with client(server, ACME) as acme, client(server, "wrong-token-" + ACME[::-1]) as wrong:
        say(acme, "acme:logged")
        say(wrong, "acme:logged")

    log = server.log()
    assert "acme:logged" in log  # the access log did record the requests
    for secret in (ACME, GLOBEX, ADMIN, ACME[::-1]):
        assert secret not in log


def run_serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(MEMVEE), "serve", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=server_env(env),
    )


@pytest.mark.parametrize(
    ("args", "env", "says"),
    [
        (["--host", "0.0.0.0"], None, "listening on 0.0.0.0 needs bearer tokens"),
        ([], {"MEMVEE_API_TOKENS": "short"}, "16 or more characters"),
        (["--tokens-file", "/nonexistent/tokens"], None, "cannot read the tokens file"),
        ([], {"MEMVEE_API_TOKENS": f"{ACME}:acme:,{ACME}:globex:"}, "listed twice"),
        (["--user", "bad\x01user"], None, "--user: user_id"),
        (["--user", " me"], None, "--user: user_id must not begin or end with spaces"),
        (["--db-url", "postgresql://me:s3cret@h:port/x"], None, "--db-url is not a database URL"),
        (["--db", "postgresql://me:s3cret@h/x"], None, "give it as --db-url"),
    ],
)
def test_a_serve_the_user_can_fix_is_one_error_line_and_exit_2(
    tmp_path: Path, args: list[str], env: dict[str, str] | None, says: str
) -> None:
    database = [] if "--db-url" in args else ["--db", str(tmp_path / "memvee.db")]
    done = run_serve(*database, "--port", "0", *args, env=env)

    assert done.returncode == 2
    assert done.stderr.startswith("error: ")
    assert says in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert "s3cret" not in done.stderr
    assert not (tmp_path / "memvee.db").exists()


@pytest.mark.parametrize("port", ["65536", "-1"])
def test_a_port_out_of_range_is_a_usage_error_not_a_trace(tmp_path: Path, port: str) -> None:
    done = run_serve("--db", str(tmp_path / "memvee.db"), "--port", port)

    assert done.returncode == 2
    assert "Invalid value for '--port'" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "memvee.db").exists()


def test_a_tokens_file_written_with_a_byte_order_mark_grants_its_first_token(
    tmp_path: Path,
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_bytes(b"\xef\xbb\xbf" + f"{ACME}:acme:\r\n{GLOBEX}\r\n".encode())
    book = TokenBook.load(tokens)
    assert book.grant_for(f"Bearer {ACME}") == Grant("acme:")
    assert book.grant_for(f"Bearer {GLOBEX}") == Grant("")


def test_a_token_listed_twice_needs_the_same_prefix_each_time(tmp_path: Path) -> None:
    assert len(TokenBook.parse(f"{ACME}:acme:\n{ACME}:acme:")) == 1
    with pytest.raises(InvalidInputError, match="listed twice with different user prefixes"):
        TokenBook.parse(f"{ACME}:acme:\n{ACME}")


@pytest.mark.parametrize("listed", [f"{ACME}:", f"{ACME}:  ", f"{GLOBEX}\n{ACME}:\n"])
def test_a_token_with_an_empty_prefix_is_refused_not_granted_every_user(listed: str) -> None:
    """``TOKEN:$TENANT`` with the variable unset would silently end the tenant's bounds."""
    with pytest.raises(InvalidInputError, match="no user prefix"):
        TokenBook.parse(listed)


@pytest.mark.parametrize("token", ["pässwörd-0123456789abc", "euro-€-0123456789abcdef"])
def test_a_token_that_is_not_ascii_is_refused_as_it_could_never_match(token: str) -> None:
    with pytest.raises(InvalidInputError, match="must be ASCII"):
        TokenBook.parse(token)


def test_a_tokens_file_that_is_not_text_is_refused_by_name(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_bytes(b"\xff\xfe\x00 not text")
    with pytest.raises(InvalidInputError, match=r"'.*tokens' is not UTF-8 text"):
        TokenBook.load(tokens)


@pytest.mark.parametrize("listed", ["", "# the operators' tokens go here\n", "\n,,\n"])
def test_a_tokens_file_that_holds_no_token_is_refused_not_served_without_tokens(
    tmp_path: Path, listed: str
) -> None:
    """``--tokens-file`` given a file not filled yet: on loopback the server ran with no
    token at all, and elsewhere it asked for the --tokens-file it was given."""
    tokens = tmp_path / "tokens"
    tokens.write_text(listed)
    with pytest.raises(InvalidInputError, match=r"the tokens file '.*tokens' holds no token"):
        TokenBook.load(tokens)


async def test_a_refused_user_id_is_echoed_cut_short_when_long_and_whole_when_short(
    server: ServerProcess,
) -> None:
    """The 403 repeats a user id as every other answer does: whole up to 60 characters,
    else its start and its length, over the HTTP API and MCP alike."""
    long_id = "acme:" + "x" * 251
    short_id = "acme:dave"
    with client(server, GLOBEX) as globex:
        long_refused = globex.get(f"/v1/users/{long_id}").json()["message"]
        short_refused = globex.get(f"/v1/users/{short_id}").json()["message"]
    async with http_session(server.url, GLOBEX) as session:
        long_tool = await failure(session, "list_memories", user_id=long_id)
        short_tool = await failure(session, "list_memories", user_id=short_id)

    for refused in (long_refused, long_tool):
        assert long_id not in refused
        assert f"may not access user {long_id[:60]!r}... (256 characters)" in refused
    for refused in (short_refused, short_tool):
        assert f"may not access user {short_id!r}" in refused
