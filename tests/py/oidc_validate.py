"""Validates a JWT-SVID the way an OIDC relying party does, knowing only the discovery URL:
reads the discovery document, then lets PyJWT's PyJWKClient fetch the key from its jwks_uri.
Prints one JSON object.

  oidc_validate.py <discovery url> <audience> <token>
"""
import json
import sys
import urllib.request

import jwt


def main(url, audience, token):
    with urllib.request.urlopen(url, timeout=10) as r:
        doc = json.load(r)
    client = jwt.PyJWKClient(doc["jwks_uri"], cache_jwk_set=False)
    key = client.get_signing_key_from_jwt(token)
    claims = jwt.decode(
        token,
        key.key,
        algorithms=doc["id_token_signing_alg_values_supported"],
        audience=audience,
        issuer=doc["issuer"],
        options={"require": ["exp", "iat", "sub", "aud", "iss"]},
    )
    out = {"sub": claims["sub"], "iss": claims["iss"], "kid": key.key_id}
    try:
        jwt.decode(
            token,
            key.key,
            algorithms=doc["id_token_signing_alg_values_supported"],
            audience="someone-else",
        )
        out["wrong_audience"] = "accepted"
    except jwt.InvalidAudienceError:
        out["wrong_audience"] = "InvalidAudienceError"
    print(json.dumps(out))


if __name__ == "__main__":
    main(*sys.argv[1:4])
