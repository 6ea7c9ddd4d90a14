-- Version 7: the MLflow mirror's cursor and retry queue. Hone's own tables stay the source of
-- truth; a row here says how far one record (a pipeline, campaign or deployment) has been
-- written to MLflow: `synced_version` is the record's version (its last change, Unix ms) that
-- was written completely, `remote` what MLflow calls it (run ids, registered versions), and
-- `attempts` / `next_attempt_ms` / `last_error` the backoff after a failure. A record whose
-- version is newer than `synced_version` is due. Portable SQL, as 0001.
CREATE TABLE mlflow_sync (
    kind TEXT NOT NULL,
    ref_id TEXT NOT NULL,
    synced_version BIGINT NOT NULL,
    attempts BIGINT NOT NULL,
    next_attempt_ms BIGINT NOT NULL,
    last_error TEXT,
    remote TEXT,
    updated_at_ms BIGINT NOT NULL,
    PRIMARY KEY (kind, ref_id)
);
