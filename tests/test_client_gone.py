"""A client that goes away mid-request is not a server error.

Seen in the fault run at 3,000 payments: shoppers' and CamPay's requests that timed out on their side
while the instance was still reading their bodies left 528 "unhandled error" lines (each with a
traceback, and a 500 answered to nobody) in one instance's log, burying the real errors.
"""

from __future__ import annotations

import asyncio

from tests.harness import WAIT
from tests.test_server_process import free_port, run_server, stop, wait_healthy


async def test_a_request_whose_client_hangs_up_mid_body_logs_no_error() -> None:
    port = free_port()
    proc = await run_server("--host", "127.0.0.1", "--port", str(port))
    try:
        await wait_healthy(port, proc)
        for path in ("/api/payment/webhook", "/api/payment/initiate"):
            _reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), WAIT)
            writer.write(
                f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                "Authorization: Bearer not-checked-before-the-body\r\nContent-Length: 1000\r\n\r\n"
                '{"reference": "'.encode()
            )
            await writer.drain()
            writer.transport.abort()  # gone before the rest of the body: a reset, as a timed-out client's
    finally:
        out, err = await stop(proc)  # a graceful stop waits for the handlers still reading
    log = (out + err).decode()
    assert proc.returncode == 0, log[-2000:]
    assert "unhandled error" not in log and "Traceback" not in log, log[-3000:]
