-- What each audit event acted on: the canonical refs of the secrets (a
-- put's new binding, what a Resolve read), and for a denial the objects
-- refused. Older events have neither; their hashes cover neither.
ALTER TABLE audit_events ADD COLUMN ref TEXT NOT NULL DEFAULT '';
ALTER TABLE audit_events ADD COLUMN refused TEXT NOT NULL DEFAULT '';
