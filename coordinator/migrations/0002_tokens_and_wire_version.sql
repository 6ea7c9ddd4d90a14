-- Version 2: API tokens, and the wire version each device speaks. Portable SQL, as 0001.

-- Bearer tokens of the HTTP API. Only the SHA-256 of a token is stored; the token itself is
-- shown once, when it is created. `role` is `viewer` (read) or `operator` (read and write).
CREATE TABLE api_tokens (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    token_sha256 TEXT NOT NULL UNIQUE,
    created_at_ms BIGINT NOT NULL,
    revoked_at_ms BIGINT
);

-- The wire version of the device's last message. Rows written before this migration came from
-- version-2 agents, so they are incompatible until their agent speaks the current version.
ALTER TABLE devices ADD COLUMN wire_version BIGINT NOT NULL DEFAULT 2;
