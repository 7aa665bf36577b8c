"""The TLS context of the MQTT connection, built from ``[mqtt.tls]``.

Built once, before anything starts (and again, only to check it, by a reload
and by ``check-config``), then handed to paho with ``tls_set_context``.
Building it here rather than through paho's ``tls_set`` gives every way the
files can be wrong a sentence naming the setting and the file: paho would
raise ``ssl.SSLError: [SSL] PEM lib`` for a certificate without its key, or a
``FileNotFoundError`` in the middle of the start.  The context is what
``tls_set`` would build: the highest TLS version, the broker's certificate
and host name checked, the system's CAs unless ``ca_file`` names others.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from bridge.core.settings import TlsSettings
from bridge.io.files import read_problem


class TlsConfigError(ValueError):
    """TLS settings that cannot work; the message names the setting and file."""


def _readable(field: str, name: str) -> None:
    """Name the file in the error when it cannot even be read (ssl's own
    errors for a missing file or a directory do not say which one)."""
    try:
        Path(name).read_bytes()
    except OSError as exc:
        raise TlsConfigError(f"mqtt.tls.{field}: {name}: {read_problem(exc)}") from None


def client_context(tls: TlsSettings | None) -> ssl.SSLContext:
    """The client context for an ``mqtts://`` URL or a ``[mqtt.tls]`` table."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if tls is None:
        context.load_default_certs()
        return context
    if tls.key_file and not tls.cert_file:
        raise TlsConfigError("mqtt.tls.key_file: set mqtt.tls.cert_file too (mutual TLS)")
    if tls.cert_file:
        _readable("cert_file", tls.cert_file)
        if tls.key_file:
            _readable("key_file", tls.key_file)
        try:
            context.load_cert_chain(tls.cert_file, tls.key_file)
        except (ssl.SSLError, ValueError) as exc:
            where = "key_file" if tls.key_file else "cert_file"
            raise TlsConfigError(
                f"mqtt.tls.{where}: {tls.cert_file} with key {tls.key_file or '(none)'}: "
                f"not a PEM certificate with its private key ({exc}); set mqtt.tls.key_file "
                "to the key of this certificate"
            ) from None
    if tls.ca_file:
        _readable("ca_file", tls.ca_file)
        try:
            context.load_verify_locations(tls.ca_file)
        except (ssl.SSLError, ValueError) as exc:
            raise TlsConfigError(
                f"mqtt.tls.ca_file: {tls.ca_file}: not a PEM CA certificate ({exc})"
            ) from None
    else:
        context.load_default_certs()
    if tls.insecure:
        context.check_hostname = False
    return context
