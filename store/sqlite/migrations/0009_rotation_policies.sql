-- Rotation policies: how and when a secret is rotated (the rotator, its
-- parameters: lengths, formats, issuer paths, never a value; a cadence and
-- its window; a certificate's renewal point). Rotations record what
-- started them.
CREATE TABLE rotation_policies (
    secret     TEXT PRIMARY KEY,
    method     TEXT NOT NULL,
    params     TEXT NOT NULL,
    every_us   BIGINT NOT NULL,
    cadence_window TEXT NOT NULL,
    renew_at   DOUBLE PRECISION NOT NULL,
    create_us  BIGINT NOT NULL,
    update_us  BIGINT NOT NULL
);
ALTER TABLE rotations ADD COLUMN trigger_kind TEXT NOT NULL DEFAULT 'manual';
