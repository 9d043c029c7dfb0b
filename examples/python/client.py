#!/usr/bin/env python3
"""splitsign from Python: sign a token over the Unix socket, fetch the JWKS,
and verify the token locally with PyJWT, as a verifier on another host would.

From the repository root, with the zero-config daemon of
`cargo run --release -- serve` running there:

    python3 -m venv .venv && .venv/bin/pip install -r examples/python/requirements.txt
    SPLITSIGN_SOCKET=var/splitsign.sock .venv/bin/python examples/python/client.py alice

Needs only the standard library to talk to the daemon; PyJWT (with
`cryptography`, for EdDSA and ES256) only for the local verification.
SPLITSIGN_ALG is the `alg` label to pin (default EdDSA), or several,
comma-separated (EdDSA,ES256 while the JWKS holds keys of both kinds);
PyJWT knows EdDSA and ES256, not Ed25519.
"""
import json
import os
import socket
import sys

import jwt  # PyJWT


def call(f, request):
    """Send one request line, read one response line; raise on an error."""
    f.write(json.dumps(request) + "\n")
    f.flush()
    response = json.loads(f.readline())
    if not response["ok"]:
        error = response["error"]
        raise RuntimeError(f"{error['code']}: {error['message']}")
    return response


def main():
    subject = sys.argv[1] if len(sys.argv) > 1 else "alice"
    issuer = os.environ.get("SPLITSIGN_ISSUER", "splitsign")
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(os.environ["SPLITSIGN_SOCKET"])
        f = s.makefile("rw")
        token = call(f, {"id": 1, "op": "sign", "claims": {"sub": subject, "aud": "api"}, "ttl": 300})["token"]
        jwks = call(f, {"id": 2, "op": "jwks"})["jwks"]

    # Verify locally: the key named by the token's kid, the pinned algs only.
    algs = os.environ.get("SPLITSIGN_ALG", "EdDSA").split(",")
    if "Ed25519" in algs:
        sys.exit("PyJWT does not accept the Ed25519 label: use alg = \"EdDSA\" (or \"ES256\") in the daemon")
    kid = jwt.get_unverified_header(token)["kid"]
    jwk = next(k for k in jwks["keys"] if k["kid"] == kid)
    # PyJWK builds the key its kty and crv say (OKP Ed25519 or EC P-256);
    # decode then refuses a key of another type than the token's alg.
    key = jwt.PyJWK(jwk).key
    claims = jwt.decode(token, key, algorithms=algs, audience="api", issuer=issuer)
    print(claims["sub"])


if __name__ == "__main__":
    main()
