-- tokenbroker store on SQLite, schema version 3: the drain of a single-session rotation
-- across the brokers of a cluster (SPEC guarantee 2; mirrors migrations/postgres/0003_token_users.sql).

-- One row per provider and broker process (its lease-holder name): the newest generation
-- that broker took up (its proxied requests may use it), and where the drain of that
-- generation stands for it: 'using'; 'draining', asked by the broker about to log in again
-- to let its requests on that generation finish; 'drained', done (or it is that broker).
-- Rows of older generations are forgotten at the next drain.
CREATE TABLE token_users (
    provider   TEXT NOT NULL,
    holder     TEXT NOT NULL,
    generation INTEGER NOT NULL,
    state      TEXT NOT NULL,
    PRIMARY KEY (provider, holder)
);
