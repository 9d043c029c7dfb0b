-- splitsign schema v3: store integrity.

-- The deployment this database belongs to. The same id is written into the
-- header of every share file, so that a database and a share directory of
-- different deployments (a wrong --db, a share file copied from another
-- host) are told apart from an old backup or an interrupted write. An
-- existing database gets its id here; its share files get it on the first
-- start after the upgrade, once the stores are shown to belong together.
CREATE TABLE deployment (
    singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
    id        TEXT    NOT NULL CHECK (length(id) = 32 AND id NOT GLOB '*[^0-9a-f]*'),
    created_at INTEGER NOT NULL
) STRICT;
INSERT INTO deployment (singleton, id, created_at)
VALUES (1, lower(hex(randomblob(16))), CAST(strftime('%s', 'now') AS INTEGER));

-- The JWS `alg` label each key signs with, recorded when it is created. NULL
-- for keys made before v3: the first start after the upgrade records the
-- label the configuration had then (the one those keys signed with).
ALTER TABLE keys ADD COLUMN alg TEXT CHECK (alg IN ('EdDSA', 'Ed25519'));

-- A re-split in progress: the generation whose file share is being
-- written. It makes a file share of that generation, left by an interrupted
-- re-split, recognisable as such (and only then removable) at start.
ALTER TABLE keys ADD COLUMN pending_generation INTEGER
    CHECK (pending_generation IS NULL OR pending_generation = share_generation + 1);
