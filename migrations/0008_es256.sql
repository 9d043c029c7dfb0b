-- splitsign schema v8: ES256 keys beside Ed25519 ones. A key's public key
-- is as long as its alg says: 32 bytes for EdDSA and Ed25519 (an Ed25519
-- point), 65 for ES256 (a P-256 point in SEC1 uncompressed form). A row
-- without a label (made before schema 3) is an Ed25519 key's.
--
-- SQLite cannot change a CHECK in place, so the table is rebuilt as its
-- documentation says (ALTER TABLE, "other kinds of table schema changes"):
-- foreign keys are off while migrations run (the database turns them on
-- after), so dropping the old table leaves db_shares as it is, and the
-- foreign key check after this migration proves every share still has its
-- key.

CREATE TABLE keys_v8 (
    kid              TEXT    PRIMARY KEY NOT NULL CHECK (length(kid) = 43),
    public_key       BLOB    NOT NULL,
    origin           TEXT    NOT NULL CHECK (origin IN ('generated', 'imported')),
    -- Unix seconds. Stored once, never recomputed from a changed schedule.
    created_at       INTEGER NOT NULL,
    activate_at      INTEGER NOT NULL,
    deactivate_at    INTEGER NOT NULL,
    retire_at        INTEGER NOT NULL,
    -- Generation of the current pair of shares (re-split bumps it).
    share_generation INTEGER NOT NULL CHECK (share_generation >= 1),
    -- 1 once both shares were read back and rebuilt the public key. A row
    -- with 0 is an interrupted creation: discarded at start, never used.
    verified         INTEGER NOT NULL DEFAULT 0 CHECK (verified IN (0, 1)),
    alg              TEXT    CHECK (alg IN ('EdDSA', 'Ed25519', 'ES256')),
    pending_generation INTEGER
        CHECK (pending_generation IS NULL OR pending_generation = share_generation + 1),
    CHECK (CASE WHEN alg = 'ES256' THEN length(public_key) = 65
                ELSE length(public_key) = 32 END),
    -- activate_at = deactivate_at: a key retired by an emergency rotation
    -- in the second it was activated; it never signs.
    CHECK (created_at <= activate_at
           AND activate_at <= deactivate_at
           AND deactivate_at <= retire_at)
) STRICT;

INSERT INTO keys_v8 (kid, public_key, origin, created_at, activate_at, deactivate_at,
                     retire_at, share_generation, verified, alg, pending_generation)
SELECT kid, public_key, origin, created_at, activate_at, deactivate_at,
       retire_at, share_generation, verified, alg, pending_generation
FROM keys;

DROP TABLE keys;
ALTER TABLE keys_v8 RENAME TO keys;
