// The Express setup: npm `jsonwebtoken` with the keys of `jwks-rsa`, which
// fetches the JWKS from its `jwksUri` (served here on 127.0.0.1 from the
// file given) and picks the key by the token's `kid`, as
// `jwksRsa.expressJwtSecret` does for express-jwt.
//
//   node tests/interop/jsonwebtoken.mjs ALGS JWKS_FILE TOKEN...
//
// ALGS: the `alg` labels to accept, comma-separated (e.g. ES256). One JSON
// line per token: {"ok":true,"kid":…,"sub":…} where kid is the RFC 7638
// thumbprint of the key that verified it, or {"ok":false,"error":…}.
import crypto from "node:crypto";
import fs from "node:fs";
import http from "node:http";
import jwt from "jsonwebtoken";
import jwksRsa from "jwks-rsa";

const [algs, jwksFile, ...tokens] = process.argv.slice(2);
const body = fs.readFileSync(jwksFile);
const server = http.createServer((req, res) => {
  if (req.url !== "/.well-known/jwks.json") {
    res.writeHead(404).end();
    return;
  }
  res.writeHead(200, { "content-type": "application/json" }).end(body);
});
await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
const client = jwksRsa({
  jwksUri: `http://127.0.0.1:${server.address().port}/.well-known/jwks.json`,
  cache: true,
  rateLimit: true,
});

/** RFC 7638 thumbprint of a public key (PEM). */
function thumbprint(pem) {
  const jwk = crypto.createPublicKey(pem).export({ format: "jwk" });
  const members =
    jwk.kty === "EC"
      ? { crv: jwk.crv, kty: jwk.kty, x: jwk.x, y: jwk.y }
      : { crv: jwk.crv, kty: jwk.kty, x: jwk.x };
  return crypto.createHash("sha256").update(JSON.stringify(members)).digest("base64url");
}

for (const token of tokens) {
  let used;
  const getKey = (header, callback) =>
    client.getSigningKey(header.kid, (err, key) => {
      if (err) return callback(err);
      used = key.getPublicKey();
      callback(null, used);
    });
  const result = await new Promise((resolve) =>
    jwt.verify(
      token,
      getKey,
      { algorithms: algs.split(","), audience: "api", issuer: "splitsign" },
      (err, claims) =>
        resolve(
          err
            ? { ok: false, error: `${err.name}: ${err.message}` }
            : { ok: true, kid: thumbprint(used), sub: claims.sub },
        ),
    ),
  );
  console.log(JSON.stringify(result));
}
server.close();
