"""What the Python client and server share: the example's routes and SPIFFE ID paths (the Rust
and Go services' too), and an X509Source from the Workload API (SPIFFE_ENDPOINT_SOCKET)."""
import time

from spiffe import X509Source

PAYMENTS_PATH = "/v1/payments"
PAYMENT_PROCESSOR_PATH = "/ns/payments/sa/payment-processor"
CHECKOUT_PATH = "/ns/payments/sa/checkout-service"


def preferring(path):
    """An SVID picker: the SVID whose SPIFFE ID has `path` when the process is entitled to
    several (a per-user entry too, say), else the Workload API's default (first) one, as the
    Rust services pick."""
    return lambda svids: next((s for s in svids if s.spiffe_id.path == path), svids[0])


def x509_source(picker, who, timeout=30):
    """The Workload API's X509Source, retried until `timeout` seconds: the entry may still be
    on its way to the agent when the process starts."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return X509Source(timeout_in_seconds=5, svid_picker=picker)
        except Exception as e:  # py-spiffe raises several types; all mean "not yet"
            if time.monotonic() >= deadline:
                raise SystemExit(f"{who}: no X509-SVID from the Workload API: {e}")
            time.sleep(0.2)
