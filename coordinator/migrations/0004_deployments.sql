-- Version 4: deployments, what each device serves, serving telemetry, alerts and suggestions.
-- Portable SQL, as 0001.

-- A deployment: the request as given (JSON), the model, and where the rollout stands.
-- state: `canary` (first wave activating or under its gate), `rolling` (the rest),
-- `done`, `rolling_back`, `rolled_back`, `failed` (a rollback that could not finish).
CREATE TABLE deployments (
    id TEXT PRIMARY KEY,
    request TEXT NOT NULL,
    model_id TEXT NOT NULL,
    state TEXT NOT NULL,
    reason TEXT,
    gate TEXT,
    gate_started_ms BIGINT,
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    finished_at_ms BIGINT
);

-- One device of a deployment. wave 0 is the canary. `previous_model_id` is what the device
-- served before (NULL: nothing), the model a rollback goes back to.
-- state: `pending`, `activating`, `active`, `failed`, `rolling_back`, `rolled_back`, `skipped`.
CREATE TABLE deployment_devices (
    deployment_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    wave BIGINT NOT NULL,
    previous_model_id TEXT,
    state TEXT NOT NULL,
    command_id TEXT,
    reason TEXT,
    sent_at_ms BIGINT,
    activated_at_ms BIGINT,
    load_ms DOUBLE PRECISION,
    updated_at_ms BIGINT NOT NULL,
    PRIMARY KEY (deployment_id, device_id)
);

-- Desired and active model per device (NULL: none).
CREATE TABLE device_models (
    device_id TEXT PRIMARY KEY,
    desired_model_id TEXT,
    active_model_id TEXT,
    deployment_id TEXT,
    updated_at_ms BIGINT NOT NULL
);

-- Serving telemetry per device: raw windows (resolution_ms = the agent's window) and, for
-- older data, downsampled buckets (resolution_ms = 300000 or 3600000).
CREATE TABLE telemetry (
    device_id TEXT NOT NULL,
    resolution_ms BIGINT NOT NULL,
    window_start_ms BIGINT NOT NULL,
    window_ms BIGINT NOT NULL,
    model_id TEXT,
    deployment_id TEXT,
    requests BIGINT NOT NULL,
    errors BIGINT NOT NULL,
    rejected BIGINT NOT NULL,
    p50_ms DOUBLE PRECISION,
    p90_ms DOUBLE PRECISION,
    p99_ms DOUBLE PRECISION,
    rss_bytes BIGINT NOT NULL,
    temperature_c DOUBLE PRECISION,
    clock_mhz BIGINT,
    throttled BIGINT NOT NULL,
    reading_source TEXT,
    dropped_windows BIGINT NOT NULL,
    stats TEXT,
    PRIMARY KEY (device_id, resolution_ms, window_start_ms)
);

-- Reference input statistics of a model (JSON list of TensorStats), for drift.
CREATE TABLE reference_stats (
    model_id TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    stats TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL
);

-- A monitoring rule that fired on a device. One open alert per (device, rule).
CREATE TABLE alerts (
    id TEXT PRIMARY KEY,
    device_id TEXT NOT NULL,
    class TEXT,
    model_id TEXT,
    deployment_id TEXT,
    rule_name TEXT NOT NULL,
    message TEXT NOT NULL,
    figures TEXT NOT NULL,
    state TEXT NOT NULL,
    suggestion_id TEXT,
    opened_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    resolved_at_ms BIGINT
);
CREATE INDEX alerts_by_device ON alerts (device_id, rule_name, state);

-- A re-compression suggestion: why, and a ready pipeline request (JSON).
CREATE TABLE suggestions (
    id TEXT PRIMARY KEY,
    alert_id TEXT NOT NULL,
    class TEXT,
    model_id TEXT,
    reason TEXT NOT NULL,
    request TEXT NOT NULL,
    pipeline_id TEXT,
    created_at_ms BIGINT NOT NULL
);
