-- splitsign PostgreSQL schema v3: ES256 keys beside Ed25519 ones. A key's
-- public key is as long as its alg says: 32 bytes for EdDSA and Ed25519
-- (an Ed25519 point), 65 for ES256 (a P-256 point in SEC1 uncompressed
-- form). Each node still checks every other node's row itself (the point
-- on its curve, the kid its thumbprint, the proof of possession by the
-- key): these checks only keep a wrong row out of the table.

ALTER TABLE splitsign_keys DROP CONSTRAINT splitsign_keys_public_key_check;
ALTER TABLE splitsign_keys DROP CONSTRAINT splitsign_keys_alg_check;
ALTER TABLE splitsign_keys ADD CONSTRAINT splitsign_keys_alg_check
    CHECK (alg IN ('EdDSA', 'Ed25519', 'ES256'));
ALTER TABLE splitsign_keys ADD CONSTRAINT splitsign_keys_public_key_check
    CHECK (CASE WHEN alg = 'ES256' THEN length(public_key) = 65
                ELSE length(public_key) = 32 END);
