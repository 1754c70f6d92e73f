-- What a secret's value is, for the consumers that need to know (Envoy
-- SDS): generic bytes, a TLS certificate and key, a CA bundle, session
-- ticket keys. Secrets registered before kinds existed are generic.
ALTER TABLE secrets ADD COLUMN kind TEXT NOT NULL DEFAULT 'generic';
