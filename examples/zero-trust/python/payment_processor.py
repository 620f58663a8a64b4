"""payment-processor in Python: the Rust service's protocol and policy on py-spiffe-tls.

Listens with mutual TLS using only Workload API material (SPIFFE_ENDPOINT_SOCKET): the
handshake accepts X509-SVIDs of the allowed caller's trust domain, then each request is
authorized by the caller's SPIFFE ID, as the Rust service does: `POST /v1/payments` only from
checkout-service (403 naming any other identity or route). A request carrying
`Authorization: Bearer <JWT-SVID>` (audience: our SPIFFE ID) has it validated offline against
the Workload API's JWT bundles and by the agent (ValidateJWTSVID), and its subject must be the
mTLS peer; a bad token gets 401.

  payment_processor.py [--listen 127.0.0.1:8443] [--client-id ID] [--require-jwt]

Logs one line per request to stderr. Serves until SIGTERM or SIGINT.
"""
import argparse
import signal
import sys
import threading
import time

from cryptography import x509 as cx509
from spiffe import JwtSvid, SpiffeId, WorkloadApiClient
from spiffetls import ListenOptions, listen
from spiffetls.tlsconfig.authorize import authorize_member_of

from zerotrust import CHECKOUT_PATH, PAYMENT_PROCESSOR_PATH, PAYMENTS_PATH, preferring, x509_source

# A request head larger than this is refused: the example has no use for big headers.
MAX_HEAD = 16 * 1024
MAX_BODY = 1 << 20


def log(line):
    print(time.strftime("%Y-%m-%dT%H:%M:%SZ ", time.gmtime()) + line, file=sys.stderr, flush=True)


prefer_own = preferring(PAYMENT_PROCESSOR_PATH)


def peer_id(conn):
    """The SPIFFE ID in the peer's leaf (the handshake verified the chain)."""
    cert = conn.get_peer_certificate().to_cryptography()
    san = cert.extensions.get_extension_for_class(cx509.SubjectAlternativeName).value
    uris = san.get_values_for_type(cx509.UniformResourceIdentifier)
    if len(uris) != 1:
        raise ValueError(f"the peer's SVID carries {len(uris)} URI SANs")
    return SpiffeId(uris[0]), format(cert.serial_number, "x")


def read_request(conn):
    """(method, path, headers, body) of one HTTP/1.1 request."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            raise ValueError("the connection ended before the request head")
        data += chunk
        if len(data) > MAX_HEAD:
            raise ValueError("request head too large")
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method, path, _version = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = min(int(headers.get("content-length", "0")), MAX_BODY)
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            break
        body += chunk
    return method, path, headers, body[:length]


class Service:
    def __init__(self, own, allowed, require_jwt):
        self.own = own
        self.allowed = allowed
        self.require_jwt = require_jwt
        self.jwts = WorkloadApiClient()
        self.payments = 0
        self.lock = threading.Lock()

    def validate_jwt(self, token):
        """The token's subject, validated offline (JWT bundles of the Workload API) and by the
        agent; both must accept it and agree on the subject."""
        audience = str(self.own)
        try:
            # The bundle to check it with is its subject's trust domain's (py-spiffe wants it).
            claimed = JwtSvid.parse_insecure(token, {audience}).spiffe_id
            bundle = self.jwts.fetch_jwt_bundles().get_bundle_for_trust_domain(
                claimed.trust_domain
            )
            if bundle is None:
                raise ValueError(f"no JWT bundle for {claimed.trust_domain}")
            local = JwtSvid.parse_and_validate(token, bundle, {audience}).spiffe_id
        except Exception as e:
            raise ValueError(f"local validation: {e}") from e
        try:
            remote = self.jwts.validate_jwt_svid(token, audience).spiffe_id
        except Exception as e:
            raise ValueError(f"the Workload API's validation: {e}") from e
        if local != remote:
            raise ValueError(f"local validation says {local}, the Workload API {remote}")
        return local

    def decide(self, peer, method, path, headers, body):
        """(status, body) for one request from an mTLS peer."""
        if method != "POST" or path != PAYMENTS_PATH:
            return 403, (
                f"forbidden: route {method} {path} is not allowed for any identity "
                f"(only POST {PAYMENTS_PATH} exists)"
            )
        if peer != self.allowed:
            return 403, (
                f"forbidden: identity {peer} may not call {method} {path} (only {self.allowed} may)"
            )
        note = ""
        auth = headers.get("authorization", "")
        if auth.startswith("Bearer "):
            try:
                subject = self.validate_jwt(auth[len("Bearer "):])
            except Exception as e:
                return 401, f"unauthorized: JWT-SVID: {e}"
            if subject != peer:
                return 401, f"unauthorized: JWT-SVID subject {subject} is not the mTLS peer {peer}"
            note = f", JWT-SVID of {subject} valid"
        elif self.require_jwt:
            return 401, "unauthorized: a JWT-SVID (Authorization: Bearer) is required"
        with self.lock:
            self.payments += 1
            n = self.payments
        return 200, f"payment pay-{n} accepted for {peer} ({len(body)} bytes of order{note})"

    def serve(self, conn, remote):
        try:
            conn.do_handshake()
            peer, serial = peer_id(conn)
            method, path, headers, body = read_request(conn)
        except Exception as e:
            log(f"mTLS handshake or request refused from {remote}: {e!r}")
            conn.close()
            return
        status, text = self.decide(peer, method, path, headers, body)
        log(f"request peer={peer} peer_serial={serial} route={method} {path} status={status}")
        reason = {200: "OK", 401: "Unauthorized", 403: "Forbidden"}[status]
        payload = (text + "\n").encode()
        try:
            conn.sendall(
                f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n"
                f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode() + payload
            )
            conn.shutdown()
        except Exception as e:
            log(f"answering {remote}: {e!r}")
        finally:
            conn.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:8443")
    parser.add_argument("--client-id", help="the only identity allowed to POST /v1/payments")
    parser.add_argument("--require-jwt", action="store_true")
    args = parser.parse_args()

    x509 = x509_source(prefer_own, "payment-processor")
    own = prefer_own(x509.get_x509_context().x509_svids).spiffe_id
    allowed = SpiffeId(args.client_id or f"spiffe://{own.trust_domain.name}{CHECKOUT_PATH}")
    service = Service(own, allowed, args.require_jwt)
    listener = listen(
        args.listen, x509, ListenOptions(authorize_fn=authorize_member_of(allowed.trust_domain))
    )
    stop = threading.Event()

    def on_signal(_signum, _frame):
        stop.set()
        listener.close()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log(
        f"payment-processor (Python, py-spiffe-tls) listening on {args.listen} as {own}; "
        f"only {allowed} may POST {PAYMENTS_PATH}"
    )
    while not stop.is_set():
        try:
            conn, remote = listener.accept()
        except OSError:
            break
        threading.Thread(target=service.serve, args=(conn, remote), daemon=True).start()
    log("payment-processor stopping")
    x509.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
