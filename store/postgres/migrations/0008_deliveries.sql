-- The webhooks' outbox: every event queued for every webhook before it is
-- attempted. Bodies hold names, versions and fingerprints, never values.
CREATE TABLE deliveries (
    id           TEXT PRIMARY KEY,
    webhook      TEXT NOT NULL,
    event_type   TEXT NOT NULL,
    body         TEXT NOT NULL,
    state        TEXT NOT NULL,
    attempts     INTEGER NOT NULL,
    next_us      BIGINT NOT NULL,
    last_error   TEXT NOT NULL,
    create_us    BIGINT NOT NULL,
    update_us    BIGINT NOT NULL
);
CREATE INDEX deliveries_due ON deliveries (state, next_us);
CREATE INDEX deliveries_by_webhook ON deliveries (webhook, create_us);
