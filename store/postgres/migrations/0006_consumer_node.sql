-- Consumers sharing an identity (a fleet of Envoys with one SPIFFE ID) are
-- told apart by node, the Envoy's node id; empty on other channels.
ALTER TABLE consumers ADD COLUMN node TEXT NOT NULL DEFAULT '';
ALTER TABLE consumers DROP CONSTRAINT consumers_pkey;
ALTER TABLE consumers ADD PRIMARY KEY (secret, identity, channel, node);
