-- Version 3: compression pipelines, their candidates, model lineage and graph features.
-- Portable SQL, as 0001.

-- A pipeline: the request as given (JSON), where it stands, and its result (JSON, the
-- `PipelineResult` the CLI, API and report show) once decided.
CREATE TABLE pipelines (
    id TEXT PRIMARY KEY,
    request TEXT NOT NULL,
    state TEXT NOT NULL,
    stage TEXT NOT NULL,
    error TEXT,
    result TEXT,
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    finished_at_ms BIGINT
);

-- One candidate of one device class. `id` is `{pipeline}-{class}-{seq}`, so a resumed pipeline
-- finds the candidates it already made. `cache_key` identifies (parent, data, method, settings):
-- a later pipeline reuses a candidate with the same key instead of making it again.
CREATE TABLE pipeline_candidates (
    id TEXT PRIMARY KEY,
    pipeline_id TEXT NOT NULL,
    class TEXT NOT NULL,
    seq BIGINT NOT NULL,
    method TEXT NOT NULL,
    settings TEXT NOT NULL,
    runtime TEXT NOT NULL,
    precision_name TEXT NOT NULL,
    cache_key TEXT NOT NULL,
    model_id TEXT,
    status TEXT NOT NULL,
    note TEXT,
    validation TEXT,
    predicted_ms DOUBLE PRECISION,
    updated_at_ms BIGINT NOT NULL
);
CREATE INDEX pipeline_candidates_by_pipeline ON pipeline_candidates (pipeline_id);
CREATE INDEX pipeline_candidates_by_key ON pipeline_candidates (cache_key);

-- Graph features of a model at the shapes it is benchmarked with (the latency predictor's
-- input), computed once per model.
CREATE TABLE model_features (
    model_id TEXT PRIMARY KEY,
    features TEXT NOT NULL
);

-- Where a model came from: parent, method, settings, validation figures (JSON; NULL for a model
-- registered by hand).
ALTER TABLE models ADD COLUMN lineage TEXT;
