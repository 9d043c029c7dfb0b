// The JDK 17 alone, on the JCA path Spring Security's Nimbus takes for
// ES256: `Signature.getInstance("SHA256withECDSAinP1363Format")` (JWS
// signatures are raw r||s, RFC 7518 3.4) over an EC public key built from
// the JWK's x and y (`ECPublicKeySpec` on the "EC" `AlgorithmParameters`
// of secp256r1), the key picked by the token's `kid`.
//
//   java tests/interop/Verify.java JWKS_FILE TOKEN...
//
// ES256 only. One JSON line per token: {"ok":true,"kid":…,"sub":…} where
// kid is the RFC 7638 thumbprint of the key that verified it, or
// {"ok":false,"error":…}. The JSON handling is minimal (no dependency):
// the few string fields needed, from the daemon's compact JSON.

import java.math.BigInteger;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.AlgorithmParameters;
import java.security.KeyFactory;
import java.security.MessageDigest;
import java.security.Signature;
import java.security.interfaces.ECPublicKey;
import java.security.spec.ECGenParameterSpec;
import java.security.spec.ECParameterSpec;
import java.security.spec.ECPoint;
import java.security.spec.ECPublicKeySpec;
import java.util.Arrays;
import java.util.Base64;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

public class Verify {
    static String field(String json, String name) {
        Matcher m = Pattern.compile("\"" + Pattern.quote(name) + "\":\"([^\"\\\\]*)\"").matcher(json);
        if (!m.find()) throw new SecurityException("no field " + name);
        return m.group(1);
    }

    static long number(String json, String name) {
        Matcher m = Pattern.compile("\"" + Pattern.quote(name) + "\":(-?\\d+)").matcher(json);
        if (!m.find()) throw new SecurityException("no field " + name);
        return Long.parseLong(m.group(1));
    }

    static String quote(String s) {
        return "\"" + s.replace("\\", "\\\\").replace("\"", "\\\"").replace("\n", "\\n") + "\"";
    }

    static final Base64.Decoder B64 = Base64.getUrlDecoder();

    /** A P-256 public key from the JWK's x and y (32 bytes each). */
    static ECPublicKey p256(String x, String y) throws Exception {
        byte[] xb = B64.decode(x), yb = B64.decode(y);
        if (xb.length != 32 || yb.length != 32) throw new SecurityException("not a P-256 point");
        AlgorithmParameters params = AlgorithmParameters.getInstance("EC");
        params.init(new ECGenParameterSpec("secp256r1"));
        ECParameterSpec spec = params.getParameterSpec(ECParameterSpec.class);
        ECPoint w = new ECPoint(new BigInteger(1, xb), new BigInteger(1, yb));
        // The provider checks the point is on the curve.
        return (ECPublicKey) KeyFactory.getInstance("EC").generatePublic(new ECPublicKeySpec(w, spec));
    }

    static byte[] fixed32(BigInteger n) {
        byte[] b = n.toByteArray();
        byte[] out = new byte[32];
        int len = Math.min(b.length, 32);
        System.arraycopy(b, b.length - len, out, 32 - len, len);
        return out;
    }

    /** RFC 7638 thumbprint of a P-256 public key. */
    static String thumbprint(ECPublicKey key) throws Exception {
        Base64.Encoder e = Base64.getUrlEncoder().withoutPadding();
        String members = "{\"crv\":\"P-256\",\"kty\":\"EC\",\"x\":\"" + e.encodeToString(fixed32(key.getW().getAffineX()))
                + "\",\"y\":\"" + e.encodeToString(fixed32(key.getW().getAffineY())) + "\"}";
        return e.encodeToString(MessageDigest.getInstance("SHA-256").digest(members.getBytes(StandardCharsets.UTF_8)));
    }

    static String verify(String jwks, String token) throws Exception {
        String[] parts = token.split("\\.", -1);
        if (parts.length != 3) throw new SecurityException("not a JWS");
        String header = new String(B64.decode(parts[0]), StandardCharsets.UTF_8);
        if (!field(header, "alg").equals("ES256")) throw new SecurityException("unexpected alg");
        String kid = field(header, "kid");
        ECPublicKey key = null;
        Matcher keys = Pattern.compile("\\{[^{}]*\\}").matcher(jwks.substring(jwks.indexOf("\"keys\"")));
        while (keys.find()) {
            String jwk = keys.group();
            if (!field(jwk, "kid").equals(kid)) continue;
            if (!field(jwk, "kty").equals("EC") || !field(jwk, "crv").equals("P-256")) throw new SecurityException("kid names no P-256 key");
            key = p256(field(jwk, "x"), field(jwk, "y"));
        }
        if (key == null) throw new SecurityException("kid not in the JWKS");
        Signature verifier = Signature.getInstance("SHA256withECDSAinP1363Format");
        verifier.initVerify(key);
        verifier.update((parts[0] + "." + parts[1]).getBytes(StandardCharsets.US_ASCII));
        if (!verifier.verify(B64.decode(parts[2]))) throw new SecurityException("bad signature");
        String claims = new String(B64.decode(parts[1]), StandardCharsets.UTF_8);
        if (number(claims, "exp") <= System.currentTimeMillis() / 1000) throw new SecurityException("expired");
        if (!field(claims, "iss").equals("splitsign")) throw new SecurityException("wrong issuer");
        if (!field(claims, "aud").equals("api")) throw new SecurityException("wrong audience");
        return "{\"ok\":true,\"kid\":" + quote(thumbprint(key)) + ",\"sub\":" + quote(field(claims, "sub")) + "}";
    }

    public static void main(String[] args) throws Exception {
        String jwks = Files.readString(Path.of(args[0]));
        for (String token : Arrays.copyOfRange(args, 1, args.length)) {
            String line;
            try {
                line = verify(jwks, token);
            } catch (Exception e) {
                line = "{\"ok\":false,\"error\":" + quote(e.getClass().getSimpleName() + ": " + e.getMessage()) + "}";
            }
            System.out.println(line);
        }
    }
}
