"""Drives sigil-agent's Workload API with py-spiffe, an independent client, and prints what it saw
as one JSON object.

  workload_client.py fetch <socket> <audience> <audience2>
  workload_client.py watch <socket> <updates> <timeout seconds>
  workload_client.py chain <socket> <trust domain>
"""
import base64
import json
import sys
import threading

from cryptography.hazmat.primitives.serialization import Encoding

from spiffe import TrustDomain, WorkloadApiClient
from spiffe.svid.jwt_svid import JwtSvid


def fetch(client, aud1, aud2):
    out = {}
    svid = client.fetch_x509_svid()
    out["default_spiffe_id"] = str(svid.spiffe_id)
    ctx = client.fetch_x509_context()
    out["spiffe_ids"] = sorted(str(s.spiffe_id) for s in ctx.x509_svids)
    out["leaf_serials"] = sorted(str(s.leaf.serial_number) for s in ctx.x509_svids)
    bundles = client.fetch_x509_bundles()
    own = bundles.get_bundle_for_trust_domain(TrustDomain("example.org"))
    out["x509_authorities"] = len(own.x509_authorities) if own else 0
    jwt = client.fetch_jwt_svid(audience={aud1, aud2})
    out["jwt_spiffe_id"] = str(jwt.spiffe_id)
    out["jwt_audience"] = sorted(jwt.audience)
    jwt_bundles = client.fetch_jwt_bundles()
    own_jwt = jwt_bundles.get_bundle_for_trust_domain(TrustDomain("example.org"))
    out["jwt_kids"] = len(own_jwt.jwt_authorities) if own_jwt else 0
    local = JwtSvid.parse_and_validate(jwt.token, own_jwt, {aud1})
    out["local_validation_sub"] = str(local.spiffe_id)
    validated = client.validate_jwt_svid(jwt.token, aud1)
    out["validated_sub"] = str(validated.spiffe_id)
    try:
        client.validate_jwt_svid(jwt.token, "someone-else")
        out["wrong_audience"] = "accepted"
    except Exception as e:
        out["wrong_audience"] = type(e).__name__
    return out


def watch(client, updates, timeout):
    serials = []
    done = threading.Event()
    errors = []

    def on_success(ctx):
        serial = str(ctx.default_svid.leaf.serial_number)
        if not serials or serials[-1] != serial:
            serials.append(serial)
        if len(serials) >= updates:
            done.set()

    def on_error(e):
        errors.append(repr(e))

    handle = client.stream_x509_contexts(on_success=on_success, on_error=on_error)
    done.wait(timeout)
    handle.cancel()
    return {"serials": serials, "errors": errors}


def chain(client, trust_domain):
    """The default X509-SVID's chain and the trust domain's bundle, as DER base64, and whether
    each certificate of the chain is directly issued by the next, the last by a bundle root."""
    ctx = client.fetch_x509_context()
    svid = ctx.default_svid
    certs = svid.cert_chain
    bundle = ctx.x509_bundle_set.get_bundle_for_trust_domain(TrustDomain(trust_domain))
    roots = list(bundle.x509_authorities) if bundle else []
    linked = True
    for child, parent in zip(certs, certs[1:]):
        try:
            child.verify_directly_issued_by(parent)
        except Exception:
            linked = False
    anchored = False
    for root in roots:
        try:
            certs[-1].verify_directly_issued_by(root)
            anchored = True
        except Exception:
            pass
    der = lambda c: base64.b64encode(c.public_bytes(Encoding.DER)).decode()
    return {
        "spiffe_id": str(svid.spiffe_id),
        "chain": [der(c) for c in certs],
        "bundle": [der(c) for c in roots],
        "linked": linked,
        "anchored": anchored,
    }


def main():
    mode, socket_path = sys.argv[1], sys.argv[2]
    with WorkloadApiClient(socket_path="unix://" + socket_path, default_timeout=10) as client:
        if mode == "fetch":
            out = fetch(client, sys.argv[3], sys.argv[4])
        elif mode == "chain":
            out = chain(client, sys.argv[3])
        else:
            out = watch(client, int(sys.argv[3]), float(sys.argv[4]))
    print(json.dumps(out))


main()
