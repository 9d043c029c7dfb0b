-- splitsign schema v6: a leaner audit log, and leaner revocations purged
-- by index.

-- Each record stored its predecessor's hash beside its own (`prev_hash`):
-- 32 bytes a record that say nothing new, since a record's hash is made
-- from its predecessor's hash and the chain is checked by recomputing it.
-- And each record of an issued token spelled its 43-character kid: keys
-- are few, so records now name them by a number in `audit_kid`. What is
-- hashed does not change (the kid as text), so every record written before
-- this migration still verifies after it. Nothing else is dropped.
CREATE TABLE audit_kid (
    id  INTEGER PRIMARY KEY,
    kid TEXT    NOT NULL UNIQUE CHECK (length(kid) <= 256)
) STRICT;
INSERT INTO audit_kid (kid)
SELECT DISTINCT kid FROM audit WHERE kid IS NOT NULL ORDER BY kid;

CREATE TABLE audit_v6 (
    seq    INTEGER PRIMARY KEY,
    at     INTEGER NOT NULL,
    uid    INTEGER,
    pid    INTEGER,
    op     TEXT    NOT NULL,
    kid    INTEGER REFERENCES audit_kid (id),
    sub    TEXT,
    jti    TEXT,
    result TEXT    NOT NULL,
    count  INTEGER NOT NULL DEFAULT 1 CHECK (count >= 1),
    hash   BLOB    NOT NULL CHECK (length(hash) = 32)
) STRICT;
INSERT INTO audit_v6 (seq, at, uid, pid, op, kid, sub, jti, result, count, hash)
SELECT a.seq, a.at, a.uid, a.pid, a.op, k.id, a.sub, a.jti, a.result, a.count, a.hash
FROM audit a LEFT JOIN audit_kid k ON k.kid = a.kid
ORDER BY a.seq;
DROP TABLE audit;
ALTER TABLE audit_v6 RENAME TO audit;

-- Revocations appended in the order they are made, with no unique key:
-- a revoke of a random token id then writes at the end of the table, not
-- into a random page of a key index (with 100,000 revocations that was
-- most of a revoke's cost). A second revocation of the same jti or sub is
-- a second row; whoever reads them keeps the latest `before` and
-- `expires_at`, as the upsert did, and the purge by expiry removes both.
-- The same rows.
CREATE TABLE revocations_v6 (
    kind       TEXT    NOT NULL CHECK (kind IN ('jti', 'sub')),
    value      TEXT    NOT NULL CHECK (length(value) BETWEEN 1 AND 1024),
    before     INTEGER,
    expires_at INTEGER NOT NULL,
    created_at INTEGER NOT NULL
) STRICT;
INSERT INTO revocations_v6 (kind, value, before, expires_at, created_at)
SELECT kind, value, before, expires_at, created_at FROM revocations ORDER BY created_at;
DROP TABLE revocations;
ALTER TABLE revocations_v6 RENAME TO revocations;
CREATE INDEX revocations_expiry ON revocations (expires_at);
