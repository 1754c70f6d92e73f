-- Least-privilege grants and the hash-chained audit log.
CREATE TABLE policies (
    name           TEXT PRIMARY KEY,
    description    TEXT NOT NULL DEFAULT '',
    subject        TEXT NOT NULL,
    verbs          TEXT NOT NULL,
    objects        TEXT NOT NULL,
    revision       INTEGER NOT NULL,
    create_time_us INTEGER NOT NULL,
    update_time_us INTEGER NOT NULL
);

CREATE TABLE audit_events (
    seq        INTEGER PRIMARY KEY,
    time_us    INTEGER NOT NULL,
    actor      TEXT NOT NULL,
    action     TEXT NOT NULL,
    target     TEXT NOT NULL,
    decision   TEXT NOT NULL,
    policy     TEXT NOT NULL,
    outcome    TEXT NOT NULL,
    request_id TEXT NOT NULL,
    prev_hash  TEXT NOT NULL,
    hash       TEXT NOT NULL
);
CREATE INDEX audit_events_actor ON audit_events (actor, seq);
CREATE INDEX audit_events_action ON audit_events (action, seq);

-- One row: the chain head, locked by every appending transaction.
CREATE TABLE audit_head (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    seq  INTEGER NOT NULL,
    hash TEXT NOT NULL
);
INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, '');
