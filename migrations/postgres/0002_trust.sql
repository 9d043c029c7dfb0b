-- splitsign PostgreSQL schema v2: trust between nodes. Assume any one
-- node's login is in an attacker's hands: its rights must let it affect its
-- own tokens and nothing else (docs/CLUSTER.md, "What a node can do").
--
-- - Membership is the owner's: `splitsign_members` lists the nodes and
--   whether each is active. Only the owner writes it (`splitsign node add`,
--   `node remove`). A node writes only while it is an active member, and
--   the other nodes trust its rows only then (and, for a node removed
--   without --at-once, the rows it recorded before its removal).
-- - Bounds a node cannot raise: `splitsign_settings` (owner-only) holds the
--   longest key lifetime, the longest token TTL, and the caps on each
--   node's keys and revocations. Triggers owned by the owner enforce them
--   on every write.
-- - Order comes from the database: a revocation's `id` is drawn from the
--   sequence by a trigger whatever the writer sends, and `recorded_xid`
--   (the writing transaction) is set by triggers on keys and revocations.
-- - No table-level UPDATE, DELETE or TRUNCATE for node roles: those rights
--   would let a node LOCK a shared table and stop every other node. Nodes
--   update listed columns of their own rows, and delete through the
--   functions below, which delete only what the caller may.

-- The members. A removed node never comes back under the same name.
CREATE TABLE splitsign_members (
    node       TEXT    PRIMARY KEY CHECK (node ~ '^[A-Za-z0-9_.-]{1,63}$'),
    active     BOOLEAN NOT NULL DEFAULT true,
    added_at   BIGINT  NOT NULL DEFAULT extract(epoch FROM now())::bigint,
    removed_at BIGINT,
    -- Removed at once: none of its keys is trusted any more (else they
    -- retire by their timestamps).
    at_once    BOOLEAN NOT NULL DEFAULT false,
    -- The database's snapshot when it was removed: of its rows, only those
    -- written by a transaction that had committed by then are trusted (one
    -- it held open across the removal and committed later is not).
    removed_snapshot pg_snapshot,
    CHECK (active = (removed_at IS NULL)),
    CHECK (active = (removed_snapshot IS NULL)),
    CHECK (active OR removed_at >= added_at),
    CHECK (NOT (active AND at_once))
);
-- The nodes registered so far were members under schema v1.
INSERT INTO splitsign_members (node) SELECT node FROM splitsign_nodes;

-- The owner's bounds (one row). Defaults that keep every key and token of
-- a v1 cluster valid: at least 32 days of key lifetime and a day of token
-- TTL, more if a key already needs it.
CREATE TABLE splitsign_settings (
    singleton            BOOLEAN PRIMARY KEY DEFAULT true CHECK (singleton),
    -- retire_at - activate_at of any key, in seconds.
    max_key_lifetime     BIGINT  NOT NULL CHECK (max_key_lifetime BETWEEN 60 AND 3660 * 86400),
    -- exp - iat of any token, in seconds.
    max_token_ttl        BIGINT  NOT NULL CHECK (max_token_ttl BETWEEN 1 AND 366 * 86400),
    -- Keys of one node not yet retired.
    max_keys             INTEGER NOT NULL CHECK (max_keys BETWEEN 2 AND 1000),
    -- Revocations of one node: rows, and bytes of their values.
    max_revocations      BIGINT  NOT NULL CHECK (max_revocations >= 0),
    max_revocation_bytes BIGINT  NOT NULL CHECK (max_revocation_bytes >= 0)
);
INSERT INTO splitsign_settings (max_key_lifetime, max_token_ttl, max_keys, max_revocations,
                                max_revocation_bytes)
SELECT greatest(32 * 86400, coalesce(max(retire_at - activate_at), 0)),
       greatest(86400, coalesce(max(retire_at - deactivate_at), 0)),
       16, 200000, 16 * 1048576
FROM splitsign_keys;

-- Each node's beat: a count it raises each time it learns of revocations
-- (and keeps in its local database too). A database whose beat for this
-- node is lower than the node's own went back (a restored dump), whatever
-- other nodes have written since.
ALTER TABLE splitsign_nodes ADD COLUMN beat BIGINT NOT NULL DEFAULT 0;

-- The transaction of each row's last write; set by the triggers below.
ALTER TABLE splitsign_keys ADD COLUMN recorded_xid xid8 NOT NULL DEFAULT pg_current_xact_id();
ALTER TABLE splitsign_revocations
    ADD COLUMN recorded_xid xid8 NOT NULL DEFAULT pg_current_xact_id();
CREATE INDEX splitsign_revocations_node ON splitsign_revocations (node);
-- The id is drawn by the trigger below, never by a writer's default.
ALTER TABLE splitsign_revocations ALTER COLUMN id DROP DEFAULT;
CREATE INDEX splitsign_keys_node ON splitsign_keys (node, retire_at);

-- A key is a node's by proof: its row carries a signature by the key
-- over the node and kid (`pop`, made when the key is created, or moved
-- into the cluster), which every other node checks. Rows from before this
-- schema have none, and are marked `legacy` (a mark no node can set). And
-- a kid is unique per node, not in the cluster: a node that inserts a row
-- of another host's public key (seen in a JWKS) blocks nobody's key.
ALTER TABLE splitsign_keys
    ADD COLUMN pop BYTEA CHECK (pop IS NULL OR length(pop) = 64),
    ADD COLUMN legacy BOOLEAN NOT NULL DEFAULT true;
ALTER TABLE splitsign_keys ALTER COLUMN legacy SET DEFAULT false;
ALTER TABLE splitsign_keys DROP CONSTRAINT splitsign_keys_pkey;
ALTER TABLE splitsign_keys ADD PRIMARY KEY (node, kid);

-- A node's share of another node's kid is its own row (it then fails on the
-- foreign key), never a duplicate of the other node's: an error must not
-- tell which share generations another node has.
ALTER TABLE splitsign_db_shares DROP CONSTRAINT splitsign_db_shares_pkey;
ALTER TABLE splitsign_db_shares ADD PRIMARY KEY (node, kid, generation);

-- How much each node's revocations weigh, kept by a trigger.
CREATE TABLE splitsign_revocation_usage (
    node  TEXT   PRIMARY KEY,
    rows  BIGINT NOT NULL,
    bytes BIGINT NOT NULL
);
INSERT INTO splitsign_revocation_usage (node, rows, bytes)
SELECT node, count(*), coalesce(sum(octet_length(value)), 0)
FROM splitsign_revocations GROUP BY node;

-- Whether `who` is an active member.
CREATE FUNCTION splitsign_is_active(who TEXT) RETURNS BOOLEAN
    LANGUAGE sql STABLE SECURITY DEFINER AS $$
    SELECT coalesce((SELECT active FROM splitsign_members WHERE node = who), false)
$$;

-- Keys: recorded_xid is the writer's transaction; identity never changes;
-- the lifetime and the number of keys not yet retired are within the
-- owner's bounds.
CREATE FUNCTION splitsign_keys_guard() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    s splitsign_settings;
    now_ BIGINT := extract(epoch FROM now())::bigint;
    live BIGINT;
BEGIN
    SELECT * INTO s FROM splitsign_settings;
    NEW.recorded_xid := pg_current_xact_id();
    IF TG_OP = 'INSERT' THEN
        NEW.legacy := false;
    ELSE
        NEW.legacy := OLD.legacy;
        IF NEW.kid <> OLD.kid OR NEW.node <> OLD.node OR NEW.public_key <> OLD.public_key
           OR NEW.created_at <> OLD.created_at OR NEW.alg <> OLD.alg
           OR NEW.origin <> OLD.origin THEN
            RAISE EXCEPTION 'key % of node %: its kid, node, public key, alg, origin and '
                            'creation time never change', OLD.kid, OLD.node
                USING ERRCODE = 'check_violation';
        END IF;
    END IF;
    IF NEW.retire_at - NEW.activate_at > s.max_key_lifetime THEN
        RAISE EXCEPTION 'key % of node %: its lifetime (% s from activation to retirement) is '
                        'over the cluster''s max_key_lifetime (% s)',
                        NEW.kid, NEW.node, NEW.retire_at - NEW.activate_at, s.max_key_lifetime
            USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.retire_at > now_ THEN
        SELECT count(*) INTO live FROM splitsign_keys
         WHERE node = NEW.node AND retire_at > now_ AND kid <> NEW.kid;
        IF live >= s.max_keys THEN
            RAISE EXCEPTION 'node % already has % keys not yet retired (the cluster''s '
                            'max_keys)', NEW.node, live
                USING ERRCODE = 'program_limit_exceeded';
        END IF;
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER splitsign_keys_guard BEFORE INSERT OR UPDATE ON splitsign_keys
    FOR EACH ROW EXECUTE FUNCTION splitsign_keys_guard();

-- Revocations: the id from the sequence and recorded_xid from the writer's
-- transaction, whatever the writer sent; times within the owner's bounds (a
-- revocation covers tokens issued up to 10 minutes ahead of the server's
-- clock at most, and lasts no longer than the longest token).
CREATE FUNCTION splitsign_revocations_guard() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    s splitsign_settings;
    now_ BIGINT := extract(epoch FROM now())::bigint;
BEGIN
    SELECT * INTO s FROM splitsign_settings;
    NEW.id := nextval('splitsign_revocations_id_seq');
    NEW.recorded_xid := pg_current_xact_id();
    IF TG_OP = 'UPDATE' AND (NEW.kind <> OLD.kind OR NEW.value <> OLD.value
                             OR NEW.node <> OLD.node) THEN
        RAISE EXCEPTION 'a revocation''s kind, value and node never change'
            USING ERRCODE = 'check_violation';
    END IF;
    -- A revocation only grows: every node keeps what it saw, so a shrunk
    -- one would leave the cap while the others still hold it.
    IF TG_OP = 'UPDATE' AND (NEW.expires_at < OLD.expires_at
                             OR NEW.before IS DISTINCT FROM OLD.before
                                AND (NEW.before IS NULL OR NEW.before < OLD.before)) THEN
        RAISE EXCEPTION 'revocation of node %: a revocation only grows (a later before and '
                        'expires_at)', NEW.node
            USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.before IS NOT NULL AND NEW.before > now_ + 600 THEN
        RAISE EXCEPTION 'revocation of node %: `before` is % s ahead of the database''s clock '
                        '(at most 600)', NEW.node, NEW.before - now_
            USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.expires_at > now_ + s.max_token_ttl + 1200 THEN
        RAISE EXCEPTION 'revocation of node %: it lasts % s, longer than the cluster''s '
                        'max_token_ttl (% s) allows', NEW.node, NEW.expires_at - now_,
                        s.max_token_ttl
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER splitsign_revocations_guard BEFORE INSERT OR UPDATE ON splitsign_revocations
    FOR EACH ROW EXECUTE FUNCTION splitsign_revocations_guard();

-- The usage of each node, and its cap. A delete by another member (the
-- purge of a removed node's expired rows) leaves the counts alone, so that
-- no node ever waits on another's usage row.
CREATE FUNCTION splitsign_revocations_usage() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    s splitsign_settings;
    r BIGINT;
    b BIGINT;
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE')
       AND (OLD.node = session_user
            OR NOT EXISTS (SELECT 1 FROM splitsign_members WHERE node = session_user)) THEN
        UPDATE splitsign_revocation_usage
           SET rows = rows - 1, bytes = bytes - octet_length(OLD.value)
         WHERE node = OLD.node;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        INSERT INTO splitsign_revocation_usage AS u (node, rows, bytes)
        VALUES (NEW.node, 1, octet_length(NEW.value))
        ON CONFLICT (node) DO UPDATE SET rows = u.rows + 1, bytes = u.bytes + EXCLUDED.bytes
        RETURNING u.rows, u.bytes INTO r, b;
        SELECT * INTO s FROM splitsign_settings;
        IF r > s.max_revocations OR b > s.max_revocation_bytes THEN
            RAISE EXCEPTION 'node % has reached the cluster''s revocation cap (% revocations, '
                            '% bytes of values; the owner sets max_revocations and '
                            'max_revocation_bytes)', NEW.node, s.max_revocations,
                            s.max_revocation_bytes
                USING ERRCODE = 'program_limit_exceeded';
        END IF;
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER splitsign_revocations_usage AFTER INSERT OR UPDATE OR DELETE
    ON splitsign_revocations FOR EACH ROW EXECUTE FUNCTION splitsign_revocations_usage();

-- Deletes, for nodes (which hold no DELETE right): each deletes only the
-- caller's own rows, or expired rows of removed nodes, never waiting on a
-- row another session holds.

-- Delete an interrupted creation (an unverified key and its shares).
CREATE FUNCTION splitsign_discard_key(k TEXT) RETURNS BIGINT
    LANGUAGE sql SECURITY DEFINER AS $$
    WITH d AS (DELETE FROM splitsign_keys
                WHERE kid = k AND node = session_user AND NOT verified
                  AND splitsign_is_active(session_user)
                RETURNING 1)
    SELECT count(*) FROM d
$$;

-- Delete the database shares of one of the caller's keys, all of them or
-- all but generation `keep`.
CREATE FUNCTION splitsign_delete_shares(k TEXT, keep INTEGER) RETURNS BIGINT
    LANGUAGE sql SECURITY DEFINER AS $$
    WITH d AS (DELETE FROM splitsign_db_shares
                WHERE kid = k AND node = session_user
                  AND (keep IS NULL OR generation <> keep)
                  AND splitsign_is_active(session_user)
                RETURNING 1)
    SELECT count(*) FROM d
$$;

-- Delete the revocations kept until before `until`, and a day before the
-- server's clock at the latest (as long as every node keeps them: a node
-- cannot take its cap back from revocations the others still hold): the
-- caller's own, and those of nodes no longer active. A node never deletes
-- a revocation of its own that may still be in force.
CREATE FUNCTION splitsign_purge_revocations(until BIGINT) RETURNS BIGINT
    LANGUAGE sql SECURITY DEFINER AS $$
    WITH d AS (DELETE FROM splitsign_revocations WHERE ctid IN (
                   SELECT r.ctid FROM splitsign_revocations r
                    WHERE r.expires_at < least(until,
                                               extract(epoch FROM now())::bigint - 86400)
                      AND (r.node = session_user
                           OR NOT splitsign_is_active(r.node))
                      AND splitsign_is_active(session_user)
                      FOR UPDATE SKIP LOCKED)
               RETURNING 1)
    SELECT count(*) FROM d
$$;

-- Delete all of the caller's keys and shares (a move of a host into the
-- cluster replaces what an interrupted move left; its revocations only
-- grow).
CREATE FUNCTION splitsign_clear_own_rows() RETURNS VOID
    LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN
    IF NOT splitsign_is_active(session_user) THEN
        RAISE EXCEPTION 'node % is not an active member', session_user
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    DELETE FROM splitsign_keys WHERE node = session_user;
END
$$;

-- Functions that run as the owner must not find a caller's objects first
-- (a temporary table named like ours): their search path is the schema of
-- the tables, then pg_temp last.
DO $$
DECLARE
    f TEXT;
BEGIN
    FOREACH f IN ARRAY ARRAY['splitsign_is_active(text)', 'splitsign_keys_guard()',
                             'splitsign_revocations_guard()', 'splitsign_revocations_usage()',
                             'splitsign_discard_key(text)',
                             'splitsign_delete_shares(text, integer)',
                             'splitsign_purge_revocations(bigint)',
                             'splitsign_clear_own_rows()'] LOOP
        EXECUTE format('ALTER FUNCTION %s SET search_path = %I, pg_temp', f, current_schema());
        EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', f);
    END LOOP;
END
$$;

-- Writes need an active membership (on top of the owner's grants, which
-- `node remove` revokes).
DROP POLICY add_own ON splitsign_nodes;
CREATE POLICY add_own ON splitsign_nodes FOR INSERT
    WITH CHECK (node = current_user AND splitsign_is_active(current_user));
CREATE POLICY beat_own ON splitsign_nodes FOR UPDATE
    USING (node = current_user)
    WITH CHECK (node = current_user AND splitsign_is_active(current_user));
DROP POLICY add_own ON splitsign_keys;
CREATE POLICY add_own ON splitsign_keys FOR INSERT
    WITH CHECK (node = current_user AND splitsign_is_active(current_user));
DROP POLICY change_own ON splitsign_keys;
CREATE POLICY change_own ON splitsign_keys FOR UPDATE
    USING (node = current_user)
    WITH CHECK (node = current_user AND splitsign_is_active(current_user));
DROP POLICY own_only ON splitsign_db_shares;
CREATE POLICY read_own ON splitsign_db_shares FOR SELECT USING (node = current_user);
CREATE POLICY add_own ON splitsign_db_shares FOR INSERT
    WITH CHECK (node = current_user AND splitsign_is_active(current_user));
CREATE POLICY change_own ON splitsign_db_shares FOR UPDATE
    USING (node = current_user)
    WITH CHECK (node = current_user AND splitsign_is_active(current_user));
DROP POLICY add_own ON splitsign_revocations;
CREATE POLICY add_own ON splitsign_revocations FOR INSERT
    WITH CHECK (node = current_user AND splitsign_is_active(current_user));
DROP POLICY change_own ON splitsign_revocations;
CREATE POLICY change_own ON splitsign_revocations FOR UPDATE
    USING (node = current_user)
    WITH CHECK (node = current_user AND splitsign_is_active(current_user));
DROP POLICY delete_own_or_expired ON splitsign_revocations;

ALTER TABLE splitsign_members ENABLE ROW LEVEL SECURITY;
ALTER TABLE splitsign_settings ENABLE ROW LEVEL SECURITY;
ALTER TABLE splitsign_revocation_usage ENABLE ROW LEVEL SECURITY;
CREATE POLICY read_all ON splitsign_members FOR SELECT USING (true);
CREATE POLICY read_all ON splitsign_settings FOR SELECT USING (true);
CREATE POLICY read_all ON splitsign_revocation_usage FOR SELECT USING (true);

-- A change of membership or bounds is announced on the keys' channel: each
-- node re-reads the keys it trusts.
CREATE OR REPLACE FUNCTION splitsign_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify(coalesce(TG_ARGV[0], TG_TABLE_NAME), '');
    RETURN NULL;
END
$$;
CREATE TRIGGER splitsign_members_changed AFTER INSERT OR UPDATE OR DELETE ON splitsign_members
    FOR EACH STATEMENT EXECUTE FUNCTION splitsign_notify('splitsign_keys');

-- Only what other nodes read is announced (a node waits a little before
-- it reads again after an announcement that brought nothing new, which
-- may have been forged): a key row once verified (not its unverified
-- first write), a revocation added or grown (not a purge).
DROP TRIGGER splitsign_keys_changed ON splitsign_keys;
CREATE TRIGGER splitsign_keys_changed AFTER INSERT OR UPDATE ON splitsign_keys
    FOR EACH ROW WHEN (NEW.verified) EXECUTE FUNCTION splitsign_notify();
DROP TRIGGER splitsign_revocations_changed ON splitsign_revocations;
CREATE TRIGGER splitsign_revocations_changed AFTER INSERT OR UPDATE ON splitsign_revocations
    FOR EACH STATEMENT EXECUTE FUNCTION splitsign_notify();
CREATE TRIGGER splitsign_settings_changed AFTER INSERT OR UPDATE OR DELETE
    ON splitsign_settings FOR EACH STATEMENT EXECUTE FUNCTION splitsign_notify('splitsign_keys');

-- A node role's rights, in one place (`splitsign node add` and `pg-schema
-- --grant` call it): read every shared table, insert its own rows, update
-- listed columns of them, delete through the functions above. No
-- table-level UPDATE, DELETE or TRUNCATE, and no right on the sequence
-- beyond reading it.
CREATE FUNCTION splitsign_grant(r TEXT) RETURNS VOID LANGUAGE plpgsql AS $$
BEGIN
    PERFORM splitsign_revoke(r);
    EXECUTE format('GRANT SELECT ON splitsign_schema, splitsign_settings, '
                   'splitsign_revocation_usage TO %I', r);
    EXECUTE format('GRANT SELECT, INSERT, UPDATE (beat) ON splitsign_nodes TO %I', r);
    EXECUTE format('GRANT SELECT, INSERT, UPDATE (y, checksum) ON splitsign_db_shares TO %I', r);
    EXECUTE format('GRANT SELECT, INSERT, UPDATE (activate_at, deactivate_at, retire_at, '
                   'share_generation, pending_generation, verified, pop) ON splitsign_keys TO %I',
                   r);
    EXECUTE format('GRANT SELECT, INSERT, UPDATE (before, expires_at, created_at) '
                   'ON splitsign_revocations TO %I', r);
    EXECUTE format('GRANT SELECT ON SEQUENCE splitsign_revocations_id_seq TO %I', r);
    EXECUTE format('GRANT EXECUTE ON FUNCTION splitsign_is_active(text), '
                   'splitsign_discard_key(text), splitsign_delete_shares(text, integer), '
                   'splitsign_purge_revocations(bigint), splitsign_clear_own_rows() TO %I', r);
    BEGIN
        EXECUTE format('GRANT CONNECT ON DATABASE %I TO %I', current_database(), r);
    EXCEPTION WHEN insufficient_privilege THEN
        RAISE WARNING 'cannot grant % the right to connect to database % (the owner of the '
                      'tables does not own it)', r, current_database();
    END;
END
$$;

-- Take a node role's rights away (`splitsign node remove`). It keeps
-- reading the list of members, so that a session it still holds learns
-- that it was removed.
CREATE FUNCTION splitsign_revoke(r TEXT) RETURNS VOID LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('REVOKE ALL ON splitsign_schema, splitsign_nodes, splitsign_keys, '
                   'splitsign_db_shares, splitsign_revocations, splitsign_members, '
                   'splitsign_settings, splitsign_revocation_usage FROM %I', r);
    EXECUTE format('REVOKE ALL ON SEQUENCE splitsign_revocations_id_seq FROM %I', r);
    EXECUTE format('REVOKE ALL ON FUNCTION splitsign_is_active(text), '
                   'splitsign_discard_key(text), splitsign_delete_shares(text, integer), '
                   'splitsign_purge_revocations(bigint), splitsign_clear_own_rows() FROM %I', r);
    EXECUTE format('GRANT SELECT ON splitsign_members TO %I', r);
    BEGIN
        EXECUTE format('REVOKE CONNECT ON DATABASE %I FROM %I', current_database(), r);
    EXCEPTION WHEN insufficient_privilege THEN
        NULL; -- `node remove` reports whether the role may still connect
    END;
END
$$;
REVOKE ALL ON FUNCTION splitsign_grant(text), splitsign_revoke(text) FROM PUBLIC;

-- Who may connect to this database at all: the owner and each node, not
-- every role (PUBLIC's default). A removed node's door is then its CONNECT
-- right, which no node can hold a lock on (a role may lock its own
-- pg_authid row, by changing its password in an open transaction, and so
-- hold up `ALTER ROLE … NOLOGIN`). Other roles that read this database
-- (monitoring) need GRANT CONNECT of their own. Where the tables' owner
-- does not own the database, this is left as it was, with a warning, and
-- `node remove` says that the role may still connect.
DO $$
BEGIN
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO %I', current_database(), current_user);
    EXECUTE format('REVOKE CONNECT ON DATABASE %I FROM PUBLIC', current_database());
EXCEPTION WHEN insufficient_privilege THEN
    RAISE WARNING 'the owner of the splitsign tables does not own database %: PUBLIC keeps the '
                  'right to connect to it, so a removed node may still connect', current_database();
END
$$;

-- The members of a v1 cluster get the new rights in place of the old.
DO $$
DECLARE
    m TEXT;
BEGIN
    FOR m IN SELECT node FROM splitsign_members
              WHERE EXISTS (SELECT 1 FROM pg_roles WHERE rolname = node) LOOP
        PERFORM splitsign_grant(m);
    END LOOP;
END
$$;
