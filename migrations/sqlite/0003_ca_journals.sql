-- One CA journal per server replica: replicas share the datastore and each runs its own CA.
-- The trust domain's bundle (in `bundles`) is the union of every replica's live authorities,
-- rewritten in the same transaction as any journal. The single-server `ca_journal` row is
-- claimed by the first replica that starts after the upgrade (server/src/datastore/ca_journal.rs).
CREATE TABLE ca_journals (
    replica_id TEXT   NOT NULL PRIMARY KEY,
    data       BLOB   NOT NULL,
    updated_at BIGINT NOT NULL
);
