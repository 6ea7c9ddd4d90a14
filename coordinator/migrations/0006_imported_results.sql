-- Version 6: measurements made elsewhere and imported (a GPU server's, by scripts/gpu-baseline.sh
-- or a published reference), kept apart from the agents' results and always shown with their
-- provenance. `measurement` is the row as JSON (device, framework, runtime, dtype, batch,
-- latency, throughput, power); `id` is a digest of model, device, framework, runtime, dtype and
-- batch, so importing the same file twice stores each row once. Portable SQL, as 0001.
CREATE TABLE imported_results (
    id TEXT PRIMARY KEY,
    model_id TEXT NOT NULL,
    source TEXT NOT NULL,
    measurement TEXT NOT NULL,
    imported_at_ms BIGINT NOT NULL
);
CREATE INDEX imported_results_model ON imported_results (model_id);
