-- The consumer registry: who reads or watches which secret, and which
-- version each last acknowledged.
CREATE TABLE consumers (
    secret        TEXT NOT NULL,
    identity      TEXT NOT NULL,
    channel       TEXT NOT NULL,
    first_seen_us BIGINT NOT NULL,
    last_seen_us  BIGINT NOT NULL,
    version       TEXT NOT NULL,
    acked_version TEXT NOT NULL,
    ack_error     TEXT NOT NULL,
    ack_time_us   BIGINT NOT NULL,
    PRIMARY KEY (secret, identity, channel)
);
