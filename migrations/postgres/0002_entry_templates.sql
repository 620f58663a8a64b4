-- Sigil server schema for PostgreSQL, version 2: identity-template entries (as
-- migrations/sqlite/0002_entry_templates.sql).
ALTER TABLE registered_entries ADD COLUMN template BOOLEAN NOT NULL DEFAULT FALSE;
