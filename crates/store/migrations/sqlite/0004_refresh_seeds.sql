-- tokenbroker store on SQLite, schema version 4: the configured refresh tokens already
-- stored to be sent (SPEC guarantee 6; mirrors migrations/postgres/0004_refresh_seeds.sql).

-- One row per configured (or reseeded) refresh token stored, by a digest of the token and
-- the client it belongs to, never the token itself; and the provider that stored it. A
-- provider re-pointed at another client and back (or renamed) would otherwise store its
-- configured token again and send it a second time, a replay its issuer may punish by
-- revoking the whole token family.
CREATE TABLE refresh_seeds (
    digest   BLOB PRIMARY KEY,
    provider TEXT NOT NULL
);
