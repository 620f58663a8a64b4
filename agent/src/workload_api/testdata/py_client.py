"""Drives sigil-agent's Workload API with py-spiffe (an independent client) and prints what it
saw as one JSON object. Usage: py_client.py <socket path> <audience>."""
import json
import sys

from spiffe import TrustDomain, WorkloadApiClient
from spiffe.svid.jwt_svid import JwtSvid

socket_path, audience = sys.argv[1], sys.argv[2]
out = {}
with WorkloadApiClient(socket_path="unix://" + socket_path, default_timeout=10) as client:
    svid = client.fetch_x509_svid()
    out["x509_spiffe_id"] = str(svid.spiffe_id)
    out["x509_chain_len"] = len(svid.cert_chain)

    ctx = client.fetch_x509_context()
    out["context_svids"] = [str(s.spiffe_id) for s in ctx.x509_svids]

    bundles = client.fetch_x509_bundles()
    out["x509_bundle_tds"] = sorted(b.trust_domain.name for b in bundles.bundles)
    own = bundles.get_bundle_for_trust_domain(TrustDomain("example.org"))
    out["x509_own_authorities"] = len(own.x509_authorities) if own else 0

    jwt = client.fetch_jwt_svid(audience={audience})
    out["jwt_spiffe_id"] = str(jwt.spiffe_id)
    out["jwt_audience"] = sorted(jwt.audience)

    jwt_bundles = client.fetch_jwt_bundles()
    out["jwt_bundle_tds"] = sorted(b.trust_domain.name for b in jwt_bundles.bundles)
    own_jwt = jwt_bundles.get_bundle_for_trust_domain(TrustDomain("example.org"))
    out["jwt_kids"] = sorted(own_jwt.jwt_authorities.keys())
    # Local verification with the JWKS the agent served.
    local = JwtSvid.parse_and_validate(jwt.token, own_jwt, {audience})
    out["local_validation_sub"] = str(local.spiffe_id)

    validated = client.validate_jwt_svid(jwt.token, audience)
    out["validated_sub"] = str(validated.spiffe_id)
    try:
        client.validate_jwt_svid(jwt.token, "someone-else")
        out["wrong_audience"] = "accepted"
    except Exception as e:  # ValidateJwtSvidError wrapping INVALID_ARGUMENT
        out["wrong_audience"] = type(e).__name__

print(json.dumps(out))
