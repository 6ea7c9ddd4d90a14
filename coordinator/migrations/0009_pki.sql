-- Version 9: device identities (issue 15). `enrol_tokens` holds one-time enrolment tokens by
-- their SHA-256 (the token itself is shown once); `device_identities` the enrolled key of each
-- device (`key_id`: SHA-256 of its public key) and its state (`active`, `pending` re-enrolment
-- awaiting approval, `approved`, `revoked`, `decommissioned`); `device_certs` every certificate
-- issued, by serial, with its fingerprint and revocation. Portable SQL, as 0001.
CREATE TABLE enrol_tokens (
    token_hash TEXT PRIMARY KEY,
    id TEXT NOT NULL,
    device_id TEXT,
    created_at_ms BIGINT NOT NULL,
    expires_at_ms BIGINT NOT NULL,
    used_at_ms BIGINT,
    used_by TEXT
);

CREATE TABLE device_identities (
    device_id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    key_id TEXT NOT NULL,
    enrolled_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    pending_key_id TEXT
);

CREATE TABLE device_certs (
    serial TEXT PRIMARY KEY,
    device_id TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    key_id TEXT NOT NULL,
    issued_at_ms BIGINT NOT NULL,
    not_after_ms BIGINT NOT NULL,
    revoked_at_ms BIGINT
);

CREATE INDEX device_certs_device ON device_certs (device_id);
