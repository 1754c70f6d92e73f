-- Rotations: durable state machines, one active per secret (the partial
-- unique index). Versions and fingerprints only, never a value.
CREATE TABLE rotations (
    id           TEXT PRIMARY KEY,
    secret       TEXT NOT NULL,
    ref          TEXT NOT NULL,
    method       TEXT NOT NULL,
    state        TEXT NOT NULL,
    actor        TEXT NOT NULL,
    emergency    BOOLEAN NOT NULL,
    from_version TEXT NOT NULL,
    to_version   TEXT NOT NULL,
    detail       TEXT NOT NULL,
    deadline_us  BIGINT NOT NULL,
    create_us    BIGINT NOT NULL,
    update_us    BIGINT NOT NULL
);
CREATE UNIQUE INDEX rotations_one_active ON rotations (secret) WHERE state NOT IN ('completed', 'failed', 'rolled_back');
CREATE INDEX rotations_by_secret ON rotations (secret, create_us);
