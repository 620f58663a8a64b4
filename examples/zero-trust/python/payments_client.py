"""A Python workload calling payment-processor over SPIFFE mTLS with py-spiffe-tls.

Another stack interoperating with the Rust and Go services: its SVID and trust bundle come only
from the Workload API (SPIFFE_ENDPOINT_SOCKET), it verifies that the server presents
spiffe://<our trust domain>/ns/payments/sa/payment-processor (or --server-id), and sends one
HTTP/1.1 request. Registered as reporting it is refused; as checkout-service, allowed. --jwt
also sends a JWT-SVID from the Workload API (audience: the server's SPIFFE ID) as
`Authorization: Bearer`.

  payments_client.py HOST:PORT [METHOD] [PATH] [--server-id ID] [--jwt]

Prints one line. Exit status: 0 on a 2xx, 3 when the server refused the call (HTTP 403),
1 on any other failure (TLS, wrong server identity, connection).
"""
import argparse
import sys

from spiffe import SpiffeId, WorkloadApiClient
from spiffetls import dial
from spiffetls.tlsconfig.authorize import authorize_id

from zerotrust import PAYMENT_PROCESSOR_PATH, preferring, x509_source

OWN_PATH = "/ns/analytics/sa/reporting"


prefer_own = preferring(OWN_PATH)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("address")
    parser.add_argument("method", nargs="?", default="POST")
    parser.add_argument("path", nargs="?", default="/v1/payments")
    parser.add_argument("--server-id", help="the only server identity to talk to")
    parser.add_argument("--jwt", action="store_true", help="send a JWT-SVID with the call")
    args = parser.parse_args()
    method, path = args.method, args.path

    x509 = x509_source(prefer_own, "reporting")
    # The SVID spiffetls presents: the one our picker chose.
    own = prefer_own(x509.get_x509_context().x509_svids).spiffe_id
    server_id = SpiffeId(args.server_id or f"spiffe://{own.trust_domain.name}{PAYMENT_PROCESSOR_PATH}")
    prefix = f"[python {own}] {method} {path}"
    bearer = ""
    if args.jwt:
        client = WorkloadApiClient()
        try:
            token = client.fetch_jwt_svid({str(server_id)}, subject=own).token
        except Exception as e:
            print(f"{prefix} -> failed: fetching a JWT-SVID: {e}")
            return 1
        finally:
            client.close()
        bearer = f"Authorization: Bearer {token}\r\n"
    try:
        conn = dial(args.address, x509, authorize_fn=authorize_id(server_id))
        body = b'{"report":"daily"}'
        conn.sendall(
            f"{method} {path} HTTP/1.1\r\nHost: payment-processor\r\n{bearer}"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            f"Connection: close\r\n\r\n".encode() + body
        )
        response = b""
        ended = None
        while True:
            try:
                chunk = conn.recv(65536)
            except Exception as e:  # pyOpenSSL: ZeroReturnError / SysCallError at close
                ended = e
                break
            if not chunk:
                break
            response += chunk
        conn.close()
    except Exception as e:
        print(f"{prefix} -> failed: {e}")
        return 1
    finally:
        x509.close()
    if not response:
        # In TLS 1.3 a server refusing our SVID says so after our handshake ended: at the read.
        print(f"{prefix} -> failed: no response, the server closed the connection ({ended!r})")
        return 1

    head, _, payload = response.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    label = "allowed" if 200 <= status < 300 else "refused" if status == 403 else "failed"
    print(f"{prefix} -> {status} {label}: {payload.decode().strip()} [server {server_id} verified]")
    return 0 if label == "allowed" else 3 if label == "refused" else 1


if __name__ == "__main__":
    sys.exit(main())
