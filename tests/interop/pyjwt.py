"""PyJWT (with `cryptography`): `PyJWKClient`, which fetches the JWKS from
its URL (served here on 127.0.0.1 from the file given) into a `PyJWKSet`
and picks the key by the token's `kid`.

    python tests/interop/pyjwt.py ALGS JWKS_FILE TOKEN...

ALGS: the `alg` labels to accept, comma-separated. One JSON line per
token: {"ok":true,"kid":…,"sub":…} where kid is the RFC 7638 thumbprint of
the key that verified it, or {"ok":false,"error":…}.
"""
import base64
import hashlib
import http.server
import json
import sys
import threading

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat


def b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def thumbprint(key):
    """RFC 7638 thumbprint of a public key."""
    if isinstance(key, ec.EllipticCurvePublicKey):
        n = key.public_numbers()
        members = {"crv": "P-256", "kty": "EC", "x": b64(n.x.to_bytes(32, "big")), "y": b64(n.y.to_bytes(32, "big"))}
    elif isinstance(key, ed25519.Ed25519PublicKey):
        members = {"crv": "Ed25519", "kty": "OKP", "x": b64(key.public_bytes(Encoding.Raw, PublicFormat.Raw))}
    else:
        raise TypeError(type(key).__name__)
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True)
    return b64(hashlib.sha256(canonical.encode()).digest())


def main():
    algs, jwks_file, *tokens = sys.argv[1:]
    with open(jwks_file, "rb") as f:
        body = f.read()

    class Jwks(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path != "/.well-known/jwks.json":
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Jwks)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    client = jwt.PyJWKClient(f"http://127.0.0.1:{server.server_port}/.well-known/jwks.json")
    for token in tokens:
        try:
            key = client.get_signing_key_from_jwt(token)
            claims = jwt.decode(token, key.key, algorithms=algs.split(","), audience="api", issuer="splitsign")
            result = {"ok": True, "kid": thumbprint(key.key), "sub": claims["sub"]}
        except Exception as e:  # every refusal, reported
            result = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        print(json.dumps(result), flush=True)
    server.shutdown()


if __name__ == "__main__":
    main()
