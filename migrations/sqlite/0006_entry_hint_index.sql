-- The web console searches entries by hint (and `entry show -hint` filters by it): an index
-- so that a search stays fast with many entries. Paged in ID order, hence `id` after `hint`.
CREATE INDEX registered_entries_hint ON registered_entries (hint, id);
