-- NATS operator mode. The operator and system-account keys (one pair for every tenant
-- server) and each tenant's account key, sealed with security.secrets_key. User keys are
-- never stored: each node mints its own users at start and at every rotation.
CREATE TABLE nats_trust (
    name TEXT PRIMARY KEY,
    seed TEXT NOT NULL
);
CREATE TABLE tenant_credentials (
    tenant_id TEXT PRIMARY KEY REFERENCES tenants(id) ON DELETE CASCADE,
    account_seed TEXT NOT NULL,
    -- Users issued at or before this Unix second are revoked (the account JWT's `*`).
    revoked_before_s BIGINT NOT NULL,
    rotated_at_ms BIGINT NOT NULL
);
