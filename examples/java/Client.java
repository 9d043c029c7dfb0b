// splitsign from Java 17, with the JDK only: sign a token over the Unix
// socket (UnixDomainSocketAddress), fetch the JWKS, and verify the token
// locally with the JDK's own Signature (Ed25519 for an OKP key, ECDSA P-256
// for an EC key), as a verifier on another host would.
//
// From the repository root, with the zero-config daemon of
// `cargo run --release -- serve` running there:
//
//   SPLITSIGN_SOCKET=var/splitsign.sock java examples/java/Client.java alice
//
// SPLITSIGN_ALG is the `alg` label to pin (default EdDSA; the JDK also
// verifies tokens labelled Ed25519 or ES256), or several, comma-separated
// (EdDSA,ES256 while the JWKS holds keys of both kinds).
//
// The JSON handling is deliberately minimal (no dependency): it reads the
// few string fields this example needs.

import java.io.ByteArrayOutputStream;
import java.math.BigInteger;
import java.net.StandardProtocolFamily;
import java.net.UnixDomainSocketAddress;
import java.nio.ByteBuffer;
import java.nio.channels.SocketChannel;
import java.nio.charset.StandardCharsets;
import java.security.AlgorithmParameters;
import java.security.KeyFactory;
import java.security.PublicKey;
import java.security.Signature;
import java.security.spec.ECGenParameterSpec;
import java.security.spec.ECParameterSpec;
import java.security.spec.ECPoint;
import java.security.spec.ECPublicKeySpec;
import java.security.spec.X509EncodedKeySpec;
import java.util.Arrays;
import java.util.Base64;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

public class Client {
    private final SocketChannel channel;
    private final ByteArrayOutputStream pending = new ByteArrayOutputStream();

    Client(String path) throws Exception {
        channel = SocketChannel.open(StandardProtocolFamily.UNIX);
        channel.connect(UnixDomainSocketAddress.of(path));
    }

    /** Send one request line, read one response line; throw on an error. */
    String call(String request) throws Exception {
        channel.write(ByteBuffer.wrap((request + "\n").getBytes(StandardCharsets.UTF_8)));
        ByteBuffer buf = ByteBuffer.allocate(16384);
        while (true) {
            byte[] bytes = pending.toByteArray();
            for (int i = 0; i < bytes.length; i++) {
                if (bytes[i] == '\n') {
                    String line = new String(bytes, 0, i, StandardCharsets.UTF_8);
                    pending.reset();
                    pending.write(bytes, i + 1, bytes.length - i - 1);
                    if (!line.contains("\"ok\":true")) {
                        throw new IllegalStateException("splitsign: " + field(line, "code") + ": " + field(line, "message"));
                    }
                    return line;
                }
            }
            buf.clear();
            if (channel.read(buf) < 0) throw new IllegalStateException("connection closed");
            pending.write(buf.array(), 0, buf.position());
        }
    }

    /** The value of a string field (no escapes in the values used here). */
    static String field(String json, String name) {
        Matcher m = Pattern.compile("\"" + Pattern.quote(name) + "\":\"([^\"]*)\"").matcher(json);
        if (!m.find()) throw new IllegalStateException("no field " + name);
        return m.group(1);
    }

    static long number(String json, String name) {
        Matcher m = Pattern.compile("\"" + Pattern.quote(name) + "\":(-?\\d+)").matcher(json);
        if (!m.find()) throw new IllegalStateException("no field " + name);
        return Long.parseLong(m.group(1));
    }

    /** An Ed25519 public key from its raw 32 bytes (the JWK "x"). */
    static PublicKey ed25519(byte[] raw) throws Exception {
        // SubjectPublicKeyInfo for Ed25519 (RFC 8410) is this prefix + the key.
        byte[] prefix = {0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00};
        byte[] der = new byte[prefix.length + raw.length];
        System.arraycopy(prefix, 0, der, 0, prefix.length);
        System.arraycopy(raw, 0, der, prefix.length, raw.length);
        return KeyFactory.getInstance("Ed25519").generatePublic(new X509EncodedKeySpec(der));
    }

    /** A P-256 public key from the JWK's x and y (32 bytes each). */
    static PublicKey p256(byte[] x, byte[] y) throws Exception {
        if (x.length != 32 || y.length != 32) throw new SecurityException("not a P-256 key");
        AlgorithmParameters params = AlgorithmParameters.getInstance("EC");
        params.init(new ECGenParameterSpec("secp256r1"));
        ECParameterSpec curve = params.getParameterSpec(ECParameterSpec.class);
        ECPoint point = new ECPoint(new BigInteger(1, x), new BigInteger(1, y));
        return KeyFactory.getInstance("EC").generatePublic(new ECPublicKeySpec(point, curve));
    }

    public static void main(String[] args) throws Exception {
        String subject = args.length > 0 ? args[0] : "alice";
        String issuer = System.getenv().getOrDefault("SPLITSIGN_ISSUER", "splitsign");
        Client daemon = new Client(System.getenv("SPLITSIGN_SOCKET"));
        String token = field(daemon.call("{\"id\":1,\"op\":\"sign\",\"claims\":{\"sub\":\"" + subject + "\",\"aud\":\"api\"},\"ttl\":300}"), "token");
        String jwks = daemon.call("{\"id\":2,\"op\":\"jwks\"}");
        daemon.channel.close();

        // Verify locally: header alg (a pinned one) and kid, the key with
        // that kid (of the type the alg needs), the signature, then exp, iss
        // and aud.
        Base64.Decoder b64 = Base64.getUrlDecoder();
        String[] parts = token.split("\\.");
        String header = new String(b64.decode(parts[0]), StandardCharsets.UTF_8);
        String alg = field(header, "alg");
        String pinned = System.getenv().getOrDefault("SPLITSIGN_ALG", "EdDSA");
        if (!Arrays.asList(pinned.split(",")).contains(alg)) throw new SecurityException("unexpected alg " + alg);
        String kid = field(header, "kid");
        String jwk = null;
        Matcher keys = Pattern.compile("\\{[^{}]*\\}").matcher(jwks.substring(jwks.indexOf("\"keys\"")));
        while (keys.find()) {
            if (field(keys.group(), "kid").equals(kid)) jwk = keys.group();
        }
        if (jwk == null) throw new SecurityException("kid not in the JWKS");
        Signature verifier;
        PublicKey key;
        String kty = field(jwk, "kty");
        if (kty.equals("OKP") && (alg.equals("EdDSA") || alg.equals("Ed25519")) && field(jwk, "crv").equals("Ed25519")) {
            verifier = Signature.getInstance("Ed25519");
            key = ed25519(b64.decode(field(jwk, "x")));
        } else if (kty.equals("EC") && alg.equals("ES256") && field(jwk, "crv").equals("P-256")) {
            // JWS ECDSA signatures are r||s (RFC 7518 3.4), not DER.
            verifier = Signature.getInstance("SHA256withECDSAinP1363Format");
            key = p256(b64.decode(field(jwk, "x")), b64.decode(field(jwk, "y")));
        } else {
            throw new SecurityException("the key " + kid + " (" + kty + ") is not for " + alg);
        }
        verifier.initVerify(key);
        verifier.update((parts[0] + "." + parts[1]).getBytes(StandardCharsets.US_ASCII));
        if (!verifier.verify(b64.decode(parts[2]))) throw new SecurityException("bad signature");
        String claims = new String(b64.decode(parts[1]), StandardCharsets.UTF_8);
        if (number(claims, "exp") <= System.currentTimeMillis() / 1000) throw new SecurityException("expired");
        if (!field(claims, "iss").equals(issuer)) throw new SecurityException("wrong issuer");
        if (!field(claims, "aud").equals("api")) throw new SecurityException("wrong audience");
        System.out.println(field(claims, "sub"));
    }
}
