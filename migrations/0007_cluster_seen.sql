-- splitsign schema v7: what a node of a cluster has seen.

-- Every revocation this node has read from PostgreSQL or made itself, with
-- the node that made it, kept until a day after `expires_at` (as the
-- cluster purges them). A database that goes back (a restored dump) never
-- un-revokes a token here: the node keeps these in force, and writes its
-- own back. Empty on a single host.
CREATE TABLE cluster_revocations (
    kind       TEXT    NOT NULL CHECK (kind IN ('jti', 'sub')),
    value      TEXT    NOT NULL CHECK (length(value) BETWEEN 1 AND 1024),
    node       TEXT    NOT NULL,
    before     INTEGER,
    expires_at INTEGER NOT NULL,
    UNIQUE (kind, value, node)
) STRICT;
CREATE INDEX cluster_revocations_expiry ON cluster_revocations (expires_at);
CREATE INDEX cluster_revocations_node ON cluster_revocations (node);

-- The highest mark of PostgreSQL's revocation sequence this node has
-- seen, and this node's beat (raised each time it learns of revocations,
-- in PostgreSQL first): a database whose mark or whose beat for this node
-- is lower went back.
CREATE TABLE cluster_seen (
    singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
    high_id   INTEGER NOT NULL,
    beat      INTEGER NOT NULL DEFAULT 0
) STRICT;
