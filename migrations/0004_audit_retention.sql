-- splitsign schema v4: a bounded audit log.

-- Failures that carry no token (a refused verify, a refused sign, a refused
-- connection) are recorded in aggregate: one record per peer uid, op and
-- result per second, with how many there were. Issued tokens and admin ops
-- keep one record each (count 1). The count is part of the record's hash.
ALTER TABLE audit ADD COLUMN count INTEGER NOT NULL DEFAULT 1 CHECK (count >= 1);

-- Where the chain starts after old records were pruned: the last pruned
-- record's seq and hash. `audit --verify` then checks from here.
CREATE TABLE audit_anchor (
    singleton     INTEGER PRIMARY KEY CHECK (singleton = 1),
    seq           INTEGER NOT NULL CHECK (seq >= 1),
    hash          BLOB    NOT NULL CHECK (length(hash) = 32),
    pruned_before INTEGER NOT NULL,
    pruned        INTEGER NOT NULL CHECK (pruned >= 1)
) STRICT;

-- A row the audit writer rewrites to learn whether the log can be written
-- again (after a full disk), without adding a record.
CREATE TABLE audit_probe (
    singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
    n         INTEGER NOT NULL
) STRICT;
INSERT INTO audit_probe (singleton, n) VALUES (1, 0);
