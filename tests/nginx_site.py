"""deploy/nginx.conf as production runs it, TLS included, on free local ports for a test.

The shipped file is changed only where a test must: its `# instance` lines name the test's upstreams,
its listen ports are free ones on 127.0.0.1, and its certificate is a self-signed pair made here for
`paytrack.example` (and 127.0.0.1). Every change is checked to have happened, so an edit of the shipped
file that a test could no longer follow fails loudly instead of testing something else.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import re
import shutil
import signal
import socket
import ssl
import tempfile
from pathlib import Path

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.harness import WAIT
from tests.test_server_process import ROOT, free_port

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
SITE = "paytrack.example"  # the deploy/nginx.conf server_name


def self_signed_pair(folder: Path) -> tuple[Path, Path]:
    """A certificate for SITE and 127.0.0.1 and its key, as PEM files (what Let's Encrypt would provide)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, SITE)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(SITE), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "fullchain.pem", folder / "privkey.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


def render(shipped: str, *, upstreams: list[int], https_port: int, http_port: int, cert: Path, key: Path) -> str:
    """The shipped config with the test's upstreams, ports and certificate; everything else as written."""
    servers = "".join(f"    server 127.0.0.1:{port} max_fails=1 fail_timeout=5s;\n" for port in upstreams)
    replacements = [
        (r"^ *listen \[::\]:\d+.*\n", ""),  # no IPv6 needed on a test machine
        (r"^( *)listen 443 ssl", rf"\1listen 127.0.0.1:{https_port} ssl"),
        (r"^( *)listen 80;", rf"\1listen 127.0.0.1:{http_port};"),
        (r"^( *ssl_certificate) +\S+;", rf"\1 {cert};"),
        (r"^( *ssl_certificate_key) +\S+;", rf"\1 {key};"),
        (r"(?:^ *server .*# instance *\n)+", servers),
    ]
    text = shipped
    for pattern, replacement in replacements:
        text, count = re.subn(pattern, replacement, text, flags=re.M)
        assert count, f"deploy/nginx.conf no longer has a line matching {pattern!r}"
    return text


class NginxSite:
    """nginx running deploy/nginx.conf (rendered by `render`) in a folder of its own, until `stop`."""

    def __init__(self, upstreams: list[int]) -> None:
        assert NGINX is not None
        # Not pytest's tmp_path: its parents are private to the user, and nginx's workers run as
        # another user when the tests run as root.
        self.folder = Path(tempfile.mkdtemp(prefix="paytrack-nginx-"))
        self.folder.chmod(0o755)
        self.https_port, self.http_port = free_port(), free_port()
        self.cert, key = self_signed_pair(self.folder)
        (self.folder / "site.conf").write_text(
            render(
                (ROOT / "deploy" / "nginx.conf").read_text(),
                upstreams=upstreams,
                https_port=self.https_port,
                http_port=self.http_port,
                cert=self.cert,
                key=key,
            )
        )
        (self.folder / "nginx.conf").write_text(
            f"""worker_processes 1;
pid {self.folder}/nginx.pid;
error_log {self.folder}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log {self.folder}/access.log;
    client_body_temp_path {self.folder}/body;
    proxy_temp_path {self.folder}/proxy;
    fastcgi_temp_path {self.folder}/fastcgi;
    uwsgi_temp_path {self.folder}/uwsgi;
    scgi_temp_path {self.folder}/scgi;
    include {self.folder}/site.conf;
}}
"""
        )
        self._process: asyncio.subprocess.Process | None = None

    @property
    def origin(self) -> str:
        """What a browser sends as `Origin` for a page served here (the URL a shopper opens)."""
        return f"https://{SITE}:{self.https_port}"

    async def start(self) -> NginxSite:
        self._process = await asyncio.create_subprocess_exec(
            str(NGINX),
            "-p",
            str(self.folder),
            "-c",
            str(self.folder / "nginx.conf"),
            "-e",
            str(self.folder / "error.log"),
            "-g",
            "daemon off;",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )

        async def listening() -> None:
            while True:
                if self._process is not None and self._process.returncode is not None:
                    errors = (self.folder / "error.log").read_text(errors="replace")
                    raise AssertionError(f"nginx exited with {self._process.returncode}:\n{errors}")
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", self.https_port)
                except OSError:
                    await asyncio.sleep(0.05)
                    continue
                writer.close()
                return

        await asyncio.wait_for(listening(), WAIT * 2)
        return self

    async def stop(self) -> None:
        if self._process is not None and self._process.returncode is None:
            self._process.send_signal(signal.SIGQUIT)  # graceful: what `nginx -s quit` sends
            try:
                await asyncio.wait_for(self._process.wait(), WAIT * 2)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self._process.kill()
                await self._process.wait()
        shutil.rmtree(self.folder, ignore_errors=True)

    def session(self) -> aiohttp.ClientSession:
        """A client that finds SITE at 127.0.0.1 and trusts the test certificate, as a browser would the real one."""
        trusted = ssl.create_default_context(cafile=str(self.cert))
        connector = aiohttp.TCPConnector(ssl=trusted, resolver=_PinnedResolver({SITE: "127.0.0.1"}))
        return aiohttp.ClientSession(connector=connector)


class _PinnedResolver(AbstractResolver):
    """Resolves the names it is given to fixed addresses (an /etc/hosts line for one client)."""

    def __init__(self, names: dict[str, str]) -> None:
        self.names = names

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET) -> list[ResolveResult]:
        address = self.names.get(host, host)
        return [
            {
                "hostname": host,
                "host": address,
                "port": port,
                "family": socket.AF_INET,
                "proto": 0,
                "flags": socket.AI_NUMERICHOST,
            }
        ]

    async def close(self) -> None:
        return None
