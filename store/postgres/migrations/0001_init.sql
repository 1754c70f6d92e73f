-- secretplane schema v1 (PostgreSQL). Secret values have no column: secrets
-- hold references, configuration documents hold refs and checked literals.
-- Names use the "C" collation so ordering is bytewise, as in SQLite.
CREATE SEQUENCE revision_seq;

CREATE TABLE secrets (
    name           TEXT COLLATE "C" PRIMARY KEY,
    ref            TEXT NOT NULL,
    description    TEXT NOT NULL DEFAULT '',
    owner          TEXT NOT NULL DEFAULT '',
    required       BOOLEAN NOT NULL DEFAULT FALSE,
    labels         TEXT NOT NULL DEFAULT '{}',
    revision       BIGINT NOT NULL,
    create_time_us BIGINT NOT NULL,
    update_time_us BIGINT NOT NULL
);
CREATE INDEX secrets_ref ON secrets (ref);

CREATE TABLE configs (
    name           TEXT COLLATE "C" PRIMARY KEY,
    identity       TEXT NOT NULL DEFAULT '',
    entries        TEXT NOT NULL DEFAULT '[]',
    labels         TEXT NOT NULL DEFAULT '{}',
    revision       BIGINT NOT NULL,
    create_time_us BIGINT NOT NULL,
    update_time_us BIGINT NOT NULL
);
