-- Consumers sharing an identity (a fleet of Envoys with one SPIFFE ID) are
-- told apart by node, the Envoy's node id; empty on other channels.
-- SQLite cannot change a primary key in place: the table is rebuilt.
CREATE TABLE consumers_new (
    secret        TEXT NOT NULL,
    identity      TEXT NOT NULL,
    channel       TEXT NOT NULL,
    node          TEXT NOT NULL DEFAULT '',
    first_seen_us BIGINT NOT NULL,
    last_seen_us  BIGINT NOT NULL,
    version       TEXT NOT NULL,
    acked_version TEXT NOT NULL,
    ack_error     TEXT NOT NULL,
    ack_time_us   BIGINT NOT NULL,
    PRIMARY KEY (secret, identity, channel, node)
);
INSERT INTO consumers_new (secret, identity, channel, node, first_seen_us, last_seen_us, version, acked_version, ack_error, ack_time_us)
    SELECT secret, identity, channel, '', first_seen_us, last_seen_us, version, acked_version, ack_error, ack_time_us FROM consumers;
DROP TABLE consumers;
ALTER TABLE consumers_new RENAME TO consumers;
