-- (PostgreSQL) The write probe: every few seconds each server rewrites this one row through the
-- same write path as every change; readiness (`healthcheck`, `/ready`) reflects whether the
-- last attempt committed (server/src/datastore/probe.rs).
CREATE TABLE write_probe (
    id         INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
    written_at BIGINT  NOT NULL
);
