"""`verify_signature` against the hook requests of a real node: a backend written with the
standard library identifies WebSocket clients by their session cookie and refuses requests
whose signature does not verify."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import websockets
from harness import WAIT, start_node

from switchboard_client import verify_signature

pytestmark = pytest.mark.anyio

SECRET = "hook-secret-for-the-python-test"


def test_verify_signature_checks_body_secret_and_age():
    import hashlib
    import hmac

    body = b'{"conn_id":1}'
    stamp = 1_700_000_000
    digest = hmac.new(SECRET.encode(), f"{stamp}.".encode() + body, hashlib.sha256).hexdigest()
    header = f"t={stamp},v1={digest}"
    assert verify_signature(header, body, SECRET, now=stamp + 10)
    assert not verify_signature(header, body + b" ", SECRET, now=stamp)
    assert not verify_signature(header, body, "another secret", now=stamp)
    assert not verify_signature(header, body, SECRET, now=stamp + 301), "too old: a replay"
    assert not verify_signature(None, body, SECRET)
    assert not verify_signature("v1=abc", body, SECRET)


class Backend(BaseHTTPRequestHandler):
    """The connect hook: `session=<user>` names the user, when the request is signed."""

    verified: list[bool] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        ok = verify_signature(self.headers.get("Switchboard-Signature"), body, SECRET)
        Backend.verified.append(ok)
        request = json.loads(body)
        cookie = request["headers"].get("Cookie", "")
        user = dict(pair.split("=", 1) for pair in cookie.split("; ") if "=" in pair).get(
            "session"
        )
        if not ok:
            answer = {"error": {"message": "bad signature"}}
        elif user:
            answer = {"result": {"user": user, "info": {"name": user.title()}}}
        else:
            answer = {"error": {"message": "log in first"}}
        payload = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: object) -> None:
        pass


async def test_a_cookie_session_is_identified_by_a_python_backend():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Backend)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    config = f"""
[hooks]
connect_url = "http://127.0.0.1:{port}/connect"
secret = "{SECRET}"
forward_headers = ["Cookie"]
"""
    node = start_node(config=config)
    try:
        async with websockets.connect(
            node.ws_url, additional_headers={"Cookie": "theme=dark; session=ada"}
        ) as ws:
            welcome = json.loads(await ws.recv())
            assert welcome["user"] == "ada"
        async with websockets.connect(node.ws_url) as ws:
            assert "user" not in json.loads(await ws.recv())
            error = json.loads(await ws.recv())
            assert (error["code"], error["message"]) == ("unauthorized", "log in first")
            started = time.monotonic()
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await ws.recv()
            assert closed.value.rcvd.code == 4003
            assert time.monotonic() - started < WAIT
        assert Backend.verified and all(Backend.verified)
    finally:
        node.stop()
        server.shutdown()
