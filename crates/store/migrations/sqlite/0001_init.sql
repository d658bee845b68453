-- tokenbroker store, schema version 1.
-- Times are Unix milliseconds. Secrets are sealed by the core before they arrive here.

CREATE TABLE tokens (
    provider      TEXT PRIMARY KEY,
    generation    INTEGER NOT NULL,
    issued_at_ms  INTEGER NOT NULL,
    expires_at_ms INTEGER NOT NULL,
    refresh_at_ms INTEGER NOT NULL,
    sealed        BLOB NOT NULL
);

CREATE TABLE leases (
    provider      TEXT PRIMARY KEY,
    holder        TEXT NOT NULL,
    expires_at_ms INTEGER NOT NULL,
    fence         INTEGER NOT NULL
);

CREATE TABLE audit (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms      INTEGER NOT NULL,
    provider   TEXT NOT NULL,
    event      TEXT NOT NULL,
    generation INTEGER,
    detail     TEXT NOT NULL
);
CREATE INDEX audit_by_time ON audit (at_ms);

CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
