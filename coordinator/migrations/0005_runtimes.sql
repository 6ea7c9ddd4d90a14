-- Version 5: the runtimes each agent announces (JSON: runtime, version or the problem), so that
-- ONNX Runtime jobs go only to agents that can run them. Portable SQL, as 0001.
ALTER TABLE devices ADD COLUMN runtimes TEXT NOT NULL DEFAULT '[]';
