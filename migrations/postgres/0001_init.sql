-- splitsign PostgreSQL schema v1: the key rows, database shares (x = 2) and
-- revocations of every node of a cluster. A node's file shares (x = 1) never
-- leave its host: this database never holds one, so a dump of it alone, or a
-- host's disk alone, rebuilds no key. The audit log stays in each host's
-- local SQLite.
--
-- Row-level security: every node reads every node's keys and revocations,
-- and changes only its own rows; it never reads another node's shares. A
-- node is its login role (`current_user`), which its credentials prove.
-- The policies bind roles that do not own the tables; the owner (who
-- applies this schema) is not bound. See docs/CLUSTER.md for the roles.

-- One row per node: its deployment id, which the header of each of its
-- share files carries.
CREATE TABLE splitsign_nodes (
    node       TEXT   PRIMARY KEY CHECK (node ~ '^[A-Za-z0-9_.-]{1,63}$'),
    deployment TEXT   NOT NULL CHECK (deployment ~ '^[0-9a-f]{32}$'),
    created_at BIGINT NOT NULL
);

CREATE TABLE splitsign_keys (
    node               TEXT    NOT NULL REFERENCES splitsign_nodes (node),
    kid                TEXT    PRIMARY KEY CHECK (length(kid) = 43),
    public_key         BYTEA   NOT NULL CHECK (length(public_key) = 32),
    origin             TEXT    NOT NULL CHECK (origin IN ('generated', 'imported')),
    -- Unix seconds. Stored once, never recomputed from a changed schedule.
    created_at         BIGINT  NOT NULL,
    activate_at        BIGINT  NOT NULL,
    deactivate_at      BIGINT  NOT NULL,
    retire_at          BIGINT  NOT NULL,
    share_generation   INTEGER NOT NULL CHECK (share_generation >= 1),
    -- A re-split in progress (its file share may exist on the node's host).
    pending_generation INTEGER CHECK (pending_generation IS NULL
                                      OR pending_generation = share_generation + 1),
    -- true once both shares were read back and rebuilt the public key.
    verified           BOOLEAN NOT NULL DEFAULT false,
    alg                TEXT    NOT NULL CHECK (alg IN ('EdDSA', 'Ed25519')),
    UNIQUE (node, kid),
    CHECK (created_at <= activate_at
           AND activate_at <= deactivate_at
           AND deactivate_at <= retire_at)
);

-- The database share of each key that can still sign. The foreign key
-- includes the node (a cascade bypasses row-level security: it may only
-- follow the owner's own key).
CREATE TABLE splitsign_db_shares (
    node       TEXT     NOT NULL,
    kid        TEXT     NOT NULL,
    generation INTEGER  NOT NULL,
    x          SMALLINT NOT NULL CHECK (x = 2),
    y          BYTEA    NOT NULL CHECK (length(y) = 32),
    checksum   BYTEA    NOT NULL CHECK (length(checksum) = 32),
    PRIMARY KEY (kid, generation),
    FOREIGN KEY (node, kid) REFERENCES splitsign_keys (node, kid) ON DELETE CASCADE
);

-- Revoked tokens (kind 'jti') and subjects (kind 'sub': tokens issued at or
-- before `before`), of every node, kept until `expires_at`. `id` grows with
-- every change, so a node reads only what is new.
CREATE TABLE splitsign_revocations (
    id         BIGSERIAL PRIMARY KEY,
    kind       TEXT      NOT NULL CHECK (kind IN ('jti', 'sub')),
    value      TEXT      NOT NULL CHECK (length(value) BETWEEN 1 AND 1024),
    before     BIGINT,
    expires_at BIGINT    NOT NULL,
    created_at BIGINT    NOT NULL,
    node       TEXT      NOT NULL,
    UNIQUE (kind, value, node)
);
CREATE INDEX splitsign_revocations_expiry ON splitsign_revocations (expires_at);

-- Every change to keys or revocations is announced (after commit, once per
-- statement); nodes treat it as a hint and re-read.
CREATE FUNCTION splitsign_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify(TG_TABLE_NAME, '');
    RETURN NULL;
END
$$;
CREATE TRIGGER splitsign_keys_changed AFTER INSERT OR UPDATE OR DELETE ON splitsign_keys
    FOR EACH STATEMENT EXECUTE FUNCTION splitsign_notify();
CREATE TRIGGER splitsign_revocations_changed AFTER INSERT OR UPDATE OR DELETE
    ON splitsign_revocations FOR EACH STATEMENT EXECUTE FUNCTION splitsign_notify();

ALTER TABLE splitsign_nodes ENABLE ROW LEVEL SECURITY;
ALTER TABLE splitsign_keys ENABLE ROW LEVEL SECURITY;
ALTER TABLE splitsign_db_shares ENABLE ROW LEVEL SECURITY;
ALTER TABLE splitsign_revocations ENABLE ROW LEVEL SECURITY;

CREATE POLICY read_all ON splitsign_nodes FOR SELECT USING (true);
CREATE POLICY add_own ON splitsign_nodes FOR INSERT WITH CHECK (node = current_user);

CREATE POLICY read_all ON splitsign_keys FOR SELECT USING (true);
CREATE POLICY add_own ON splitsign_keys FOR INSERT WITH CHECK (node = current_user);
CREATE POLICY change_own ON splitsign_keys FOR UPDATE
    USING (node = current_user) WITH CHECK (node = current_user);
CREATE POLICY delete_own ON splitsign_keys FOR DELETE USING (node = current_user);

CREATE POLICY own_only ON splitsign_db_shares FOR ALL
    USING (node = current_user) WITH CHECK (node = current_user);

CREATE POLICY read_all ON splitsign_revocations FOR SELECT USING (true);
CREATE POLICY add_own ON splitsign_revocations FOR INSERT WITH CHECK (node = current_user);
CREATE POLICY change_own ON splitsign_revocations FOR UPDATE
    USING (node = current_user) WITH CHECK (node = current_user);
-- Any node may purge what no longer covers a valid token.
CREATE POLICY delete_own_or_expired ON splitsign_revocations FOR DELETE
    USING (node = current_user OR expires_at < extract(epoch FROM now()));
