// npm `jose`: `jwtVerify` with `createLocalJWKSet`, which picks the key by
// the token's `kid` (and its `alg`).
//
//   node tests/interop/jose.mjs ALGS JWKS_FILE TOKEN...
//
// ALGS: the `alg` labels to accept, comma-separated. One JSON line per
// token: {"ok":true,"kid":…,"sub":…} where kid is the RFC 7638 thumbprint
// of the key that verified it, or {"ok":false,"error":…}.
import fs from "node:fs";
import { calculateJwkThumbprint, createLocalJWKSet, exportJWK, jwtVerify } from "jose";

const [algs, jwksFile, ...tokens] = process.argv.slice(2);
const jwks = createLocalJWKSet(JSON.parse(fs.readFileSync(jwksFile, "utf8")));
for (const token of tokens) {
  let result;
  try {
    const { payload, key } = await jwtVerify(token, jwks, {
      algorithms: algs.split(","),
      audience: "api",
      issuer: "splitsign",
    });
    result = { ok: true, kid: await calculateJwkThumbprint(await exportJWK(key)), sub: payload.sub };
  } catch (e) {
    result = { ok: false, error: `${e.code ?? e.name}: ${e.message}` };
  }
  console.log(JSON.stringify(result));
}
