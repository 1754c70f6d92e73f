-- secretplane schema v1 (SQLite). Secret values have no column: secrets
-- hold references, configuration documents hold refs and checked literals.
CREATE TABLE counters (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT INTO counters (name, value) VALUES ('revision', 0);

CREATE TABLE secrets (
    name           TEXT PRIMARY KEY,
    ref            TEXT NOT NULL,
    description    TEXT NOT NULL DEFAULT '',
    owner          TEXT NOT NULL DEFAULT '',
    required       INTEGER NOT NULL DEFAULT 0,
    labels         TEXT NOT NULL DEFAULT '{}',
    revision       INTEGER NOT NULL,
    create_time_us INTEGER NOT NULL,
    update_time_us INTEGER NOT NULL
);
CREATE INDEX secrets_ref ON secrets (ref);

CREATE TABLE configs (
    name           TEXT PRIMARY KEY,
    identity       TEXT NOT NULL DEFAULT '',
    entries        TEXT NOT NULL DEFAULT '[]',
    labels         TEXT NOT NULL DEFAULT '{}',
    revision       INTEGER NOT NULL,
    create_time_us INTEGER NOT NULL,
    update_time_us INTEGER NOT NULL
);
