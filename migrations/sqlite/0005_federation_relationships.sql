-- Federation relationships created at run time (`federation create`, SPIRE's
-- federated_trust_domains), beside the config file's `federates_with`. The bundle given with
-- one is stored in `bundles`, in the same transaction (server/src/datastore/federation.rs).
CREATE TABLE federation_relationships (
    trust_domain            TEXT   NOT NULL PRIMARY KEY,
    bundle_endpoint_url     TEXT   NOT NULL,
    bundle_endpoint_profile TEXT   NOT NULL CHECK (bundle_endpoint_profile IN ('https_web', 'https_spiffe')),
    -- Empty for https_web.
    endpoint_spiffe_id      TEXT   NOT NULL,
    created_at              BIGINT NOT NULL,
    updated_at              BIGINT NOT NULL
);
