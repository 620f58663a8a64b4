-- Sigil server schema, version 2: identity-template entries.
--
-- A template entry's `spiffe_id` holds the template text (`spiffe://td/ns/{k8s:ns}`); the
-- flag tells readers to parse it as a template, not as a SPIFFE ID.
ALTER TABLE registered_entries ADD COLUMN template INTEGER NOT NULL DEFAULT 0;
