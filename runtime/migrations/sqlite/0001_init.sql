-- VRSky metadata, SQLite: the same tables as PostgreSQL in SQLite's dialect
-- (INTEGER PRIMARY KEY AUTOINCREMENT for SERIAL, CURRENT_TIMESTAMP for NOW()).
CREATE TABLE tenants (
    id VARCHAR(64) PRIMARY KEY,
    name VARCHAR(255) NOT NULL,
    created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP
);

CREATE TABLE integrations (
    tenant_id VARCHAR(64) NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    id VARCHAR(64) NOT NULL,
    spec TEXT NOT NULL,
    created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    PRIMARY KEY (tenant_id, id)
);

CREATE TABLE nats_instances (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id VARCHAR(64) NOT NULL,
    instance_number INT NOT NULL,
    dns_name VARCHAR(255) NOT NULL,
    status VARCHAR(32) NOT NULL, -- active, draining, terminated
    integration_count INT DEFAULT 0,
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    updated_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    UNIQUE(tenant_id, instance_number)
);

CREATE INDEX idx_nats_instances_tenant ON nats_instances(tenant_id, status);
