-- Sigil server schema for PostgreSQL, version 1: the same tables, keys and indexes as
-- migrations/sqlite/0001_init.sql, in PostgreSQL's types (BIGINT identity, BYTEA, BOOLEAN).
--
-- Applied at start-up by the server's embedded migrator (server/src/datastore/migrate.rs), which
-- holds sqlx's advisory lock so replicas starting together migrate once; an applied migration
-- must never be edited (its checksum is recorded), add a new file instead.
--
-- Keys are `COLLATE "C"`: byte order, as in SQLite, so `ORDER BY id` and the `id > token`
-- paging agree with the SQLite backend whatever the database's default collation.

CREATE TABLE registered_entries (
    id             TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    spiffe_id      TEXT COLLATE "C" NOT NULL,
    parent_id      TEXT COLLATE "C" NOT NULL,
    selector_key   TEXT COLLATE "C" NOT NULL,
    x509_svid_ttl  BIGINT  NOT NULL,
    jwt_svid_ttl   BIGINT  NOT NULL,
    -- JSON arrays of strings.
    dns_names      TEXT    NOT NULL,
    federates_with TEXT    NOT NULL,
    admin          BOOLEAN NOT NULL,
    downstream     BOOLEAN NOT NULL,
    hint           TEXT COLLATE "C" NOT NULL,
    -- Unix seconds; NULL means the entry never expires.
    expires_at     BIGINT,
    -- The revision of the entry's latest event in entry_events.
    revision       BIGINT  NOT NULL,
    created_at     BIGINT  NOT NULL
);

CREATE UNIQUE INDEX registered_entries_identity
    ON registered_entries (spiffe_id, parent_id, selector_key);
CREATE INDEX registered_entries_parent_id ON registered_entries (parent_id);
CREATE INDEX registered_entries_expires_at
    ON registered_entries (expires_at) WHERE expires_at IS NOT NULL;

CREATE TABLE entry_selectors (
    entry_id TEXT COLLATE "C" NOT NULL REFERENCES registered_entries (id) ON DELETE CASCADE,
    type     TEXT COLLATE "C" NOT NULL,
    value    TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (entry_id, type, value)
);
CREATE INDEX entry_selectors_type_value ON entry_selectors (type, value, entry_id);

-- The change feed agents sync from. An identity column never reuses a value; revisions are
-- handed out in commit order because every write transaction first takes the datastore's
-- advisory lock (see `begin_write` in server/src/datastore/mod.rs).
CREATE TABLE entry_events (
    revision   BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    entry_id   TEXT COLLATE "C" NOT NULL,
    parent_id  TEXT COLLATE "C" NOT NULL,
    -- 'upsert' or 'delete'
    kind       TEXT   NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE attested_nodes (
    spiffe_id        TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    attestation_type TEXT COLLATE "C" NOT NULL,
    cert_serial      TEXT    NOT NULL,
    cert_expires_at  BIGINT  NOT NULL,
    new_cert_serial  TEXT,
    banned           BOOLEAN NOT NULL,
    created_at       BIGINT  NOT NULL,
    updated_at       BIGINT  NOT NULL
);
CREATE INDEX attested_nodes_cert_expires_at ON attested_nodes (cert_expires_at);

CREATE TABLE node_selectors (
    spiffe_id TEXT COLLATE "C" NOT NULL REFERENCES attested_nodes (spiffe_id) ON DELETE CASCADE,
    type      TEXT COLLATE "C" NOT NULL,
    value     TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (spiffe_id, type, value)
);
CREATE INDEX node_selectors_type_value ON node_selectors (type, value, spiffe_id);

-- Join tokens, stored as the SHA-256 (hex) of the token.
CREATE TABLE join_tokens (
    token_hash TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    expires_at BIGINT NOT NULL
);
CREATE INDEX join_tokens_expires_at ON join_tokens (expires_at);

CREATE TABLE bundles (
    trust_domain TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    data         TEXT   NOT NULL,
    updated_at   BIGINT NOT NULL
);

CREATE TABLE ca_journal (
    id         INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
    data       BYTEA   NOT NULL,
    updated_at BIGINT  NOT NULL
);
