// splitsign from Node.js: sign a token over the Unix socket (the `net`
// module), fetch the JWKS, and verify the token locally with `jose`, as a
// verifier on another host would.
//
// From the repository root, with the zero-config daemon of
// `cargo run --release -- serve` running there:
//
//   (cd examples/node && npm ci)
//   SPLITSIGN_SOCKET=var/splitsign.sock node examples/node/client.mjs alice
//
// SPLITSIGN_ALG is the `alg` label to pin (default EdDSA; jose also knows
// Ed25519 and ES256), or several, comma-separated (EdDSA,ES256 while the
// JWKS holds keys of both kinds).
import net from "node:net";
import { createLocalJWKSet, jwtVerify } from "jose";

/** A connection that sends JSON lines and resolves responses in order. */
function connect(path) {
  const socket = net.createConnection(path);
  const waiting = [];
  let buffer = "";
  socket.setEncoding("utf8");
  socket.on("data", (chunk) => {
    buffer += chunk;
    for (let i; (i = buffer.indexOf("\n")) >= 0; buffer = buffer.slice(i + 1)) {
      const response = JSON.parse(buffer.slice(0, i));
      const { resolve, reject } = waiting.shift();
      if (response.ok) resolve(response);
      else reject(new Error(`${response.error.code}: ${response.error.message}`));
    }
  });
  socket.on("error", (e) => waiting.splice(0).forEach(({ reject }) => reject(e)));
  return {
    call(request) {
      return new Promise((resolve, reject) => {
        waiting.push({ resolve, reject });
        socket.write(JSON.stringify(request) + "\n");
      });
    },
    close() {
      socket.end();
    },
  };
}

const subject = process.argv[2] ?? "alice";
const daemon = connect(process.env.SPLITSIGN_SOCKET);
const { token } = await daemon.call({ id: 1, op: "sign", claims: { sub: subject, aud: "api" }, ttl: 300 });
const { jwks } = await daemon.call({ id: 2, op: "jwks" });
daemon.close();

// Verify locally: the key named by the token's kid (of the type its alg
// needs), the pinned algs only.
const { payload } = await jwtVerify(token, createLocalJWKSet(jwks), {
  algorithms: (process.env.SPLITSIGN_ALG ?? "EdDSA").split(","),
  audience: "api",
  issuer: process.env.SPLITSIGN_ISSUER ?? "splitsign",
});
console.log(payload.sub);
