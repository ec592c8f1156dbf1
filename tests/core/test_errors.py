"""Failures named in plain words: real failed connections over loopback, turned into the text operators see."""

from __future__ import annotations

import asyncio
import datetime
import socket
import ssl
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from websockets.asyncio.client import connect

from exporter.core.errors import EXCEPTION_TEXT_LIMIT, error_text, exception_text

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def closed_port() -> int:
    """A loopback port that was free a moment ago: connecting to it is refused."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., Awaitable[int]]]:
    """Start a raw TCP server on loopback with a handler (and optionally TLS); its port."""
    servers: list[asyncio.Server] = []
    writers: list[asyncio.StreamWriter] = []

    async def start(handler: Handler, context: ssl.SSLContext | None = None) -> int:
        async def tracked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writers.append(writer)
            await handler(reader, writer)

        server = await asyncio.start_server(tracked, "127.0.0.1", 0, ssl=context)
        servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    yield start
    for server in servers:
        server.close()
    # Since Python 3.12, wait_closed() also waits for the connections: a handler that never answers
    # would hold it forever.
    for writer in writers:
        writer.transport.abort()
    for server in servers:
        await server.wait_closed()


async def failure(call: Callable[[], Awaitable[object]]) -> BaseException:
    try:
        await call()
    except Exception as exc:
        return exc
    raise AssertionError("the call did not fail")


async def get(url: str, *, timeout: float = 5.0) -> None:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session,
        session.get(url) as response,
    ):
        await response.read()


def self_signed(directory: Path) -> ssl.SSLContext:
    """A server TLS context with a certificate nobody trusts."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    return context


async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read()  # never answers; ends when the client gives up


async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.close()


async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    # SO_LINGER with a zero timeout: close() sends a RST instead of a FIN.
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


# --- aiohttp ---------------------------------------------------------------------------------------


async def test_a_refused_connection_names_the_host_and_port() -> None:
    port = closed_port()
    exc = await failure(lambda: get(f"http://127.0.0.1:{port}/"))
    assert error_text(exc, timeout=5) == f"connection refused (127.0.0.1:{port})"


async def test_a_name_that_does_not_resolve_is_a_dns_failure_naming_the_host() -> None:
    exc = await failure(lambda: get("http://whitebit-exporter-test.invalid/"))
    text = error_text(exc, timeout=5)
    assert text.startswith("DNS resolution failed (whitebit-exporter-test.invalid: ")
    assert text.endswith(")") and len(text) > len("DNS resolution failed (whitebit-exporter-test.invalid: )")


async def test_tls_spoken_to_a_plain_http_port_is_a_tls_failure_with_openssls_reason() -> None:
    app = web.Application()
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        exc = await failure(lambda: get(f"https://127.0.0.1:{port}/"))
    finally:
        await runner.cleanup()
    assert error_text(exc) == f"TLS failure: wrong version number (127.0.0.1:{port})"


async def test_an_untrusted_certificate_is_a_tls_failure_saying_why(serve, tmp_path: Path) -> None:
    port = await serve(silent, self_signed(tmp_path))
    exc = await failure(lambda: get(f"https://127.0.0.1:{port}/"))
    assert isinstance(exc, aiohttp.ClientConnectorCertificateError)
    assert error_text(exc) == f"TLS failure: certificate verify failed: self-signed certificate (127.0.0.1:{port})"


async def test_an_answer_that_never_comes_is_timed_out_after_the_limit_set(serve) -> None:
    port = await serve(silent)
    exc = await failure(lambda: get(f"http://127.0.0.1:{port}/", timeout=0.2))
    assert str(exc) == ""  # what used to be logged as "TimeoutError: "
    assert error_text(exc, timeout=0.2, peer=f"127.0.0.1:{port}") == f"timed out after 0.2s (127.0.0.1:{port})"
    assert error_text(exc) == "timed out"


async def test_a_server_that_hangs_up_before_answering_is_closed_by_peer(serve) -> None:
    port = await serve(hang_up)
    exc = await failure(lambda: get(f"http://127.0.0.1:{port}/"))
    assert error_text(exc, peer=f"127.0.0.1:{port}") == f"closed by peer before it answered (127.0.0.1:{port})"


async def test_a_connection_reset_mid_request_is_closed_by_peer(serve) -> None:
    port = await serve(reset)
    exc = await failure(lambda: get(f"http://127.0.0.1:{port}/"))
    assert isinstance(exc, aiohttp.ClientOSError)
    assert error_text(exc, peer=f"127.0.0.1:{port}") == f"closed by peer (127.0.0.1:{port})"


# --- sockets and the WebSocket client ---------------------------------------------------------------


async def test_a_refused_websocket_connection_names_the_peer_the_caller_gives() -> None:
    port = closed_port()
    exc = await failure(lambda: connect(f"ws://127.0.0.1:{port}/ws", open_timeout=5).__aenter__())
    assert isinstance(exc, ConnectionRefusedError)
    assert error_text(exc, peer=f"127.0.0.1:{port}") == f"connection refused (127.0.0.1:{port})"


async def test_a_websocket_handshake_that_never_completes_is_timed_out(serve) -> None:
    port = await serve(silent)
    exc = await failure(lambda: connect(f"ws://127.0.0.1:{port}/ws", open_timeout=0.2).__aenter__())
    assert error_text(exc, timeout=0.2, peer=f"127.0.0.1:{port}") == f"timed out after 0.2s (127.0.0.1:{port})"


async def test_a_resolver_failure_names_the_host_from_the_peer() -> None:
    loop = asyncio.get_running_loop()
    exc = await failure(lambda: loop.getaddrinfo("whitebit-exporter-test.invalid", 443))
    assert isinstance(exc, socket.gaierror)
    assert error_text(exc, peer="whitebit-exporter-test.invalid:443").startswith(
        "DNS resolution failed (whitebit-exporter-test.invalid: "
    )


def test_every_address_refused_is_one_refusal() -> None:
    # asyncio's create_connection, when each address of a name failed with its own message
    # (base_events.py: 'Multiple exceptions: {}'), e.g. localhost on ::1 and 127.0.0.1.
    exc = OSError(
        "Multiple exceptions: [Errno 111] Connect call failed ('::1', 9, 0, 0), "
        "[Errno 111] Connect call failed ('127.0.0.1', 9)"
    )
    assert error_text(exc, peer="localhost:9") == "connection refused (localhost:9)"


def test_an_unreachable_network_is_named_by_the_systems_words() -> None:
    exc = OSError(101, "Network is unreachable")
    assert error_text(exc, peer="whitebit.com:443") == "Network is unreachable (whitebit.com:443)"


# --- anything else ---------------------------------------------------------------------------------


def test_an_exception_without_plainer_words_is_its_class_and_message() -> None:
    assert error_text(ValueError("bad token")) == "ValueError: bad token"
    assert error_text(RuntimeError()) == "RuntimeError"
    assert exception_text(KeyError()) == "KeyError"


def test_a_long_message_is_cut() -> None:
    text = exception_text(ValueError("x" * 1000))
    assert len(text) == EXCEPTION_TEXT_LIMIT and text.endswith("…")
