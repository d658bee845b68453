-- tokenbroker store on PostgreSQL, schema version 1 (mirrors migrations/sqlite/0001_init.sql).
-- Times are Unix milliseconds, as in SQLite, written from the brokers' clocks, never the
-- database's. Secrets are sealed by the core before they arrive here.

CREATE TABLE tokens (
    provider      TEXT PRIMARY KEY,
    generation    BIGINT NOT NULL,
    issued_at_ms  BIGINT NOT NULL,
    expires_at_ms BIGINT NOT NULL,
    refresh_at_ms BIGINT NOT NULL,
    sealed        BYTEA NOT NULL
);

-- One issuance lease per provider: who may call the issuer now, until when, and the fence
-- that grows with every grant.
CREATE TABLE leases (
    provider      TEXT PRIMARY KEY,
    holder        TEXT NOT NULL,
    expires_at_ms BIGINT NOT NULL,
    fence         BIGINT NOT NULL
);

CREATE TABLE audit (
    id         BIGSERIAL PRIMARY KEY,
    at_ms      BIGINT NOT NULL,
    provider   TEXT NOT NULL,
    event      TEXT NOT NULL,
    generation BIGINT,
    detail     TEXT NOT NULL
);
CREATE INDEX audit_by_time ON audit (at_ms);

CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value BYTEA NOT NULL
);
