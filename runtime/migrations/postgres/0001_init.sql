-- VRSky metadata, PostgreSQL. nats_instances is exactly the specification's schema.
CREATE TABLE tenants (
    id VARCHAR(64) PRIMARY KEY,
    name VARCHAR(255) NOT NULL,
    created_at TIMESTAMP NOT NULL DEFAULT NOW()
);

CREATE TABLE integrations (
    tenant_id VARCHAR(64) NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    id VARCHAR(64) NOT NULL,
    spec TEXT NOT NULL,
    created_at TIMESTAMP NOT NULL DEFAULT NOW(),
    PRIMARY KEY (tenant_id, id)
);

CREATE TABLE nats_instances (
    id SERIAL PRIMARY KEY,
    tenant_id VARCHAR(64) NOT NULL,
    instance_number INT NOT NULL,
    dns_name VARCHAR(255) NOT NULL,
    status VARCHAR(32) NOT NULL, -- active, draining, terminated
    integration_count INT DEFAULT 0,
    created_at TIMESTAMP DEFAULT NOW(),
    updated_at TIMESTAMP DEFAULT NOW(),
    UNIQUE(tenant_id, instance_number)
);

CREATE INDEX idx_nats_instances_tenant ON nats_instances(tenant_id, status);
