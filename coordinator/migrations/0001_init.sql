-- Hone coordinator schema, version 1. Portable SQL: runs unchanged on SQLite and PostgreSQL
-- (TEXT, BIGINT, DOUBLE PRECISION only; booleans are 0/1 BIGINTs; times are Unix milliseconds).

CREATE TABLE models (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    sha256 TEXT NOT NULL UNIQUE,
    size_bytes BIGINT NOT NULL,
    summary TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL
);

CREATE TABLE devices (
    id TEXT PRIMARY KEY,
    online BIGINT NOT NULL,
    session BIGINT NOT NULL,
    arch TEXT NOT NULL,
    os TEXT NOT NULL,
    cores BIGINT NOT NULL,
    memory_bytes BIGINT NOT NULL,
    agent_version TEXT NOT NULL,
    profile TEXT,
    first_seen_ms BIGINT NOT NULL,
    last_seen_ms BIGINT NOT NULL,
    status_changed_ms BIGINT NOT NULL
);

CREATE TABLE campaigns (
    id TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    state TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    finished_at_ms BIGINT
);

CREATE TABLE jobs (
    id TEXT PRIMARY KEY,
    campaign_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    model_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    state TEXT NOT NULL,
    attempt BIGINT NOT NULL,
    max_attempts BIGINT NOT NULL,
    command_id TEXT,
    dispatched_at_ms BIGINT,
    accepted_at_ms BIGINT,
    deadline_ms BIGINT,
    finished_at_ms BIGINT,
    last_error TEXT,
    updated_at_ms BIGINT NOT NULL
);
CREATE INDEX jobs_by_campaign ON jobs (campaign_id);
CREATE INDEX jobs_by_state ON jobs (state);

CREATE TABLE results (
    job_id TEXT PRIMARY KEY,
    result_id TEXT NOT NULL,
    campaign_id TEXT NOT NULL,
    model_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    profile TEXT,
    attempt BIGINT NOT NULL,
    p50_ms DOUBLE PRECISION NOT NULL,
    p90_ms DOUBLE PRECISION NOT NULL,
    p99_ms DOUBLE PRECISION NOT NULL,
    mean_ms DOUBLE PRECISION NOT NULL,
    std_ms DOUBLE PRECISION NOT NULL,
    min_ms DOUBLE PRECISION NOT NULL,
    max_ms DOUBLE PRECISION NOT NULL,
    load_ms DOUBLE PRECISION NOT NULL,
    peak_rss_bytes BIGINT NOT NULL,
    iterations BIGINT NOT NULL,
    synthetic_inputs BIGINT NOT NULL,
    report TEXT NOT NULL,
    received_at_ms BIGINT NOT NULL
);
CREATE INDEX results_by_campaign ON results (campaign_id);
