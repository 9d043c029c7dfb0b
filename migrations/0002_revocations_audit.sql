-- splitsign schema v2: revocations and the audit log.

-- A revoked token (kind 'jti', value = jti) or subject (kind 'sub', value =
-- sub; tokens issued before `before` are revoked). Kept until `expires_at`,
-- after which no token it covers can still be valid.
CREATE TABLE revocations (
    kind       TEXT    NOT NULL CHECK (kind IN ('jti', 'sub')),
    value      TEXT    NOT NULL CHECK (length(value) BETWEEN 1 AND 1024),
    before     INTEGER,
    expires_at INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (kind, value)
) STRICT;

-- The audit log: every sign, every verify failure, every revoke and every
-- admin op. Each record holds the SHA-256 of the previous one, so that a
-- deleted or edited record breaks the chain (`splitsign audit --verify`).
CREATE TABLE audit (
    seq       INTEGER PRIMARY KEY,
    at        INTEGER NOT NULL,
    uid       INTEGER,
    pid       INTEGER,
    op        TEXT    NOT NULL,
    kid       TEXT,
    sub       TEXT,
    jti       TEXT,
    result    TEXT    NOT NULL,
    prev_hash BLOB    NOT NULL CHECK (length(prev_hash) = 32),
    hash      BLOB    NOT NULL CHECK (length(hash) = 32)
) STRICT;
