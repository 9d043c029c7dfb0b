-- splitsign schema v1: keys and their database shares.
-- The database is the source of truth for which keys exist. It holds the
-- public keys and one share (x = 2) of each key that can still sign; the
-- other share lives in the share directory. It never holds a whole key.

CREATE TABLE keys (
    kid              TEXT    PRIMARY KEY NOT NULL CHECK (length(kid) = 43),
    public_key       BLOB    NOT NULL CHECK (length(public_key) = 32),
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
    -- activate_at = deactivate_at: a key retired by an emergency rotation
    -- in the second it was activated; it never signs.
    CHECK (created_at <= activate_at
           AND activate_at <= deactivate_at
           AND deactivate_at <= retire_at)
) STRICT;

CREATE TABLE db_shares (
    kid        TEXT    NOT NULL REFERENCES keys (kid) ON DELETE CASCADE,
    generation INTEGER NOT NULL,
    x          INTEGER NOT NULL CHECK (x = 2),
    y          BLOB    NOT NULL CHECK (length(y) = 32),
    checksum   BLOB    NOT NULL CHECK (length(checksum) = 32),
    PRIMARY KEY (kid, generation)
) STRICT;
