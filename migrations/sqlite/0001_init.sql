-- Sigil server schema, version 1.
--
-- Applied at start-up by the server's embedded migrator (server/src/datastore/migrate.rs); an
-- applied migration must never be edited (its checksum is recorded), add a new file instead.
-- Portable SQL where cheap: BIGINT/TEXT/BOOLEAN, `ON CONFLICT ... DO UPDATE`, `RETURNING`.
-- SQLite-only: `INTEGER PRIMARY KEY AUTOINCREMENT` and BLOB (a PostgreSQL migration set will use
-- an identity column and BYTEA).

-- Registration entries. `selector_key` is the SHA-256 (hex) of the canonical selector set, so
-- the unique index below refuses a second entry with the same SPIFFE ID, parent and selectors
-- atomically, in whatever order the selectors were given.
CREATE TABLE registered_entries (
    id             TEXT    NOT NULL PRIMARY KEY,
    spiffe_id      TEXT    NOT NULL,
    parent_id      TEXT    NOT NULL,
    selector_key   TEXT    NOT NULL,
    x509_svid_ttl  BIGINT  NOT NULL,
    jwt_svid_ttl   BIGINT  NOT NULL,
    -- JSON arrays of strings.
    dns_names      TEXT    NOT NULL,
    federates_with TEXT    NOT NULL,
    admin          BOOLEAN NOT NULL,
    downstream     BOOLEAN NOT NULL,
    hint           TEXT    NOT NULL,
    -- Unix seconds; NULL means the entry never expires.
    expires_at     BIGINT,
    -- The revision of the entry's latest event in entry_events.
    revision       BIGINT  NOT NULL,
    created_at     BIGINT  NOT NULL
);

-- Leads with spiffe_id, so it also serves lookups by SPIFFE ID.
CREATE UNIQUE INDEX registered_entries_identity
    ON registered_entries (spiffe_id, parent_id, selector_key);
CREATE INDEX registered_entries_parent_id ON registered_entries (parent_id);
CREATE INDEX registered_entries_expires_at
    ON registered_entries (expires_at) WHERE expires_at IS NOT NULL;

-- One row per selector of an entry. The (type, value) index answers "entries having selector
-- S" without a scan, which is what the subset / superset / any matches start from.
CREATE TABLE entry_selectors (
    entry_id TEXT NOT NULL REFERENCES registered_entries (id) ON DELETE CASCADE,
    type     TEXT NOT NULL,
    value    TEXT NOT NULL,
    PRIMARY KEY (entry_id, type, value)
);
CREATE INDEX entry_selectors_type_value ON entry_selectors (type, value, entry_id);

-- The change feed agents sync from: one row per create / update / delete, written in the same
-- transaction as the change. AUTOINCREMENT so a revision is never reused, even after pruning.
CREATE TABLE entry_events (
    revision   INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    entry_id   TEXT    NOT NULL,
    parent_id  TEXT    NOT NULL,
    -- 'upsert' or 'delete'
    kind       TEXT    NOT NULL,
    created_at BIGINT  NOT NULL
);

-- Attested agents, keyed by their SPIFFE ID.
CREATE TABLE attested_nodes (
    spiffe_id        TEXT    NOT NULL PRIMARY KEY,
    attestation_type TEXT    NOT NULL,
    cert_serial      TEXT    NOT NULL,
    cert_expires_at  BIGINT  NOT NULL,
    new_cert_serial  TEXT,
    banned           BOOLEAN NOT NULL,
    created_at       BIGINT  NOT NULL,
    updated_at       BIGINT  NOT NULL
);
CREATE INDEX attested_nodes_cert_expires_at ON attested_nodes (cert_expires_at);

CREATE TABLE node_selectors (
    spiffe_id TEXT NOT NULL REFERENCES attested_nodes (spiffe_id) ON DELETE CASCADE,
    type      TEXT NOT NULL,
    value     TEXT NOT NULL,
    PRIMARY KEY (spiffe_id, type, value)
);
CREATE INDEX node_selectors_type_value ON node_selectors (type, value, spiffe_id);

-- Join tokens, stored as the SHA-256 (hex) of the token: a copy of the database holds no
-- usable token.
CREATE TABLE join_tokens (
    token_hash TEXT   NOT NULL PRIMARY KEY,
    expires_at BIGINT NOT NULL
);
CREATE INDEX join_tokens_expires_at ON join_tokens (expires_at);

-- Trust bundles by trust domain (our own and federated ones). `data` is the datastore's own
-- JSON encoding, which unlike the SPIFFE bundle format keeps each JWT authority's expiry.
CREATE TABLE bundles (
    trust_domain TEXT   NOT NULL PRIMARY KEY,
    data         TEXT   NOT NULL,
    updated_at   BIGINT NOT NULL
);

-- The CA's journal: one opaque blob.
CREATE TABLE ca_journal (
    id         INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
    data       BLOB    NOT NULL,
    updated_at BIGINT  NOT NULL
);
