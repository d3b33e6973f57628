-- Tenant API keys: the key is shown once at creation; only its SHA-256 is kept. A key's
-- id is part of the key itself, so a lookup is by primary key.
CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    key_sha256 TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL
);
CREATE INDEX api_keys_tenant ON api_keys (tenant_id);

-- Who did what, append-only (updates and deletes are refused by the database itself).
CREATE TABLE audit_log (
    id BIGSERIAL PRIMARY KEY,
    at_ms BIGINT NOT NULL,
    actor TEXT NOT NULL,
    tenant_id TEXT,
    action TEXT NOT NULL,
    target TEXT,
    outcome TEXT NOT NULL,
    detail TEXT
);
CREATE INDEX audit_log_tenant ON audit_log (tenant_id, id);
CREATE FUNCTION audit_log_append_only() RETURNS trigger AS $$
BEGIN RAISE EXCEPTION 'audit_log is append-only'; END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER audit_log_no_change BEFORE UPDATE OR DELETE ON audit_log
FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
