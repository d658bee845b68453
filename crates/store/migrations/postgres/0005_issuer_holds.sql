-- tokenbroker store on PostgreSQL, schema version 5: an issuer's request to wait (a 429's
-- Retry-After), kept for every broker sharing the store (SPEC guarantee 5; mirrors
-- migrations/sqlite/0005_issuer_holds.sql).

-- One row per provider: until when (Unix milliseconds, the database's clock) no broker
-- calls its issuer.
CREATE TABLE issuer_holds (
    provider TEXT PRIMARY KEY,
    until_ms BIGINT NOT NULL
);
