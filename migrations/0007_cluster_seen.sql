-- splitsign schema v7: what a node of a cluster has seen.

-- Every revocation this node has read from PostgreSQL or made itself, with
-- the node that made it, kept until a day after `expires_at` (as the
-- cluster purges them). A database that goes back (a restored dump) never
-- un-revokes a token here: the node keeps these in force, and writes its
-- own back. Empty on a single host.
CREATE TABLE cluster_revocations (
    -- SHA-256 of kind, value and node (16 bytes): the key, so that no
    -- index repeats a value of up to 1,024 bytes.
    digest     BLOB    NOT NULL UNIQUE CHECK (length(digest) = 16),
    kind       TEXT    NOT NULL CHECK (kind IN ('jti', 'sub')),
    value      TEXT    NOT NULL CHECK (length(value) BETWEEN 1 AND 1024),
    node       TEXT    NOT NULL,
    before     INTEGER,
    expires_at INTEGER NOT NULL
) STRICT;
CREATE INDEX cluster_revocations_expiry ON cluster_revocations (expires_at);

-- The highest mark of PostgreSQL's revocation sequence this node has
-- seen, and this node's beat (raised each time it learns of revocations,
-- in PostgreSQL first): a database whose mark or whose beat for this node
-- is lower went back.
CREATE TABLE cluster_seen (
    singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
    high_id   INTEGER NOT NULL,
    beat      INTEGER NOT NULL DEFAULT 0
) STRICT;
