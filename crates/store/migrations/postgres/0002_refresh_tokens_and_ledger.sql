-- tokenbroker store on PostgreSQL, schema version 2: rotating refresh tokens and the issuance
-- ledger (mirrors migrations/sqlite/0002_refresh_tokens_and_ledger.sql).

-- One row per refresh-token provider. `intent_at_ms` is set (durably) before a refresh
-- request is sent and cleared when its outcome is stored: a row found with an intent after a
-- crash means the issuer may have rotated the token without the broker knowing.
CREATE TABLE refresh_tokens (
    provider          TEXT PRIMARY KEY,
    generation        BIGINT NOT NULL,
    sealed            BYTEA NOT NULL,
    intent_at_ms      BIGINT,
    needs_credentials TEXT
);

-- Every issuance request, written before it is sent; `expires_at_ms` is set when its token
-- is stored (or to the request time when it produced none). Budgets count requests; caps
-- count unexpired tokens, and a request with no outcome is counted as live.
CREATE TABLE issuances (
    id              BIGSERIAL PRIMARY KEY,
    provider        TEXT NOT NULL,
    requested_at_ms BIGINT NOT NULL,
    expires_at_ms   BIGINT
);
CREATE INDEX issuances_by_provider ON issuances (provider, requested_at_ms);
