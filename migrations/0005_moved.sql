-- splitsign schema v5: a database whose keys moved to PostgreSQL.

-- `splitsign migrate-store --to-postgres` moves this host's key rows,
-- database shares and revocations to PostgreSQL (as node `node`) and then
-- records it here, in the same transaction that deletes them from this
-- database. This database keeps the audit log. A daemon configured
-- without `postgres` refuses to make new keys here: the host's keys are in
-- the cluster now.
CREATE TABLE moved_to_postgres (
    singleton  INTEGER PRIMARY KEY CHECK (singleton = 1),
    node       TEXT    NOT NULL,
    deployment TEXT    NOT NULL,
    store      TEXT    NOT NULL,
    at         INTEGER NOT NULL
) STRICT;
