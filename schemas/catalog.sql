-- Catalog DDL. Idempotent: every statement can run against an existing catalog.
CREATE TABLE IF NOT EXISTS runs (
    run_id            VARCHAR PRIMARY KEY,
    flow              VARCHAR NOT NULL,
    config_name       VARCHAR,
    config_fingerprint VARCHAR,
    config_json       VARCHAR,
    started_at        TIMESTAMP NOT NULL,
    finished_at       TIMESTAMP,
    status            VARCHAR NOT NULL,          -- running | completed | failed | abandoned
    message           VARCHAR,
    user_name         VARCHAR,
    host              VARCHAR,
    prefect_flow_run_id VARCHAR
);

CREATE TABLE IF NOT EXISTS stage_runs (
    run_id            VARCHAR NOT NULL,
    stage             VARCHAR NOT NULL,
    fingerprint       VARCHAR,
    started_at        TIMESTAMP NOT NULL,
    finished_at       TIMESTAMP,
    status            VARCHAR NOT NULL,          -- completed | failed | skipped
    rows_in           BIGINT,
    rows_out          BIGINT,
    rows_quarantined  BIGINT,
    rows_deduplicated BIGINT,
    model_calls       BIGINT,                    -- items sent to a model in this run
    cache_hits        BIGINT,                    -- items reused from earlier work
    seconds           DOUBLE,
    message           VARCHAR,
    peak_memory_mb    DOUBLE                     -- peak memory of the process that built the outputs
);

CREATE TABLE IF NOT EXISTS datasets (
    name              VARCHAR NOT NULL,
    version           INTEGER NOT NULL,
    path              VARCHAR NOT NULL,          -- the dataset's Lance table, relative to the data root
    row_count         BIGINT NOT NULL,
    content_hash      VARCHAR NOT NULL,
    schema_fingerprint VARCHAR NOT NULL,
    validation        VARCHAR NOT NULL,          -- JSON report of the expectation suite
    is_current        BOOLEAN NOT NULL,
    run_id            VARCHAR,
    stage             VARCHAR,
    fingerprint       VARCHAR,                   -- stage config fingerprint that produced it
    created_at        TIMESTAMP NOT NULL,
    meta              VARCHAR,                   -- JSON the stage stores with the version (an index manifest)
    PRIMARY KEY (name, version)
);
ALTER TABLE datasets ADD COLUMN IF NOT EXISTS meta VARCHAR;
ALTER TABLE datasets ADD COLUMN IF NOT EXISTS table_version BIGINT;  -- the Lance version of the dataset
ALTER TABLE stage_runs ADD COLUMN IF NOT EXISTS peak_memory_mb DOUBLE;  -- catalogs made before it had no column

CREATE TABLE IF NOT EXISTS lineage (
    name              VARCHAR NOT NULL,
    version           INTEGER NOT NULL,
    parent_name       VARCHAR NOT NULL,
    parent_version    INTEGER NOT NULL
);

CREATE TABLE IF NOT EXISTS quarantine (
    run_id            VARCHAR,
    stage             VARCHAR NOT NULL,
    key               VARCHAR NOT NULL,
    reason            VARCHAR NOT NULL,
    payload           VARCHAR,
    created_at        TIMESTAMP NOT NULL,
    code              VARCHAR                    -- stable reason code (reason minus ids): GROUP BY groups
);
-- catalogs made before the code column: add it, and derive it for old rows as add_quarantine does
ALTER TABLE quarantine ADD COLUMN IF NOT EXISTS code VARCHAR;

CREATE OR REPLACE VIEW current_datasets AS
    SELECT name, version, row_count, path, created_at, run_id
    FROM datasets WHERE is_current ORDER BY name;

CREATE OR REPLACE VIEW quarantine_by_reason AS
    SELECT stage, code, count(*) AS n, any_value(reason) AS example
    FROM quarantine GROUP BY ALL ORDER BY stage, n DESC;

-- Index versions are datasets named indexes/<name>: the id map is the table, the FAISS or BM25
-- files are attachments of the version, and the manifest is its meta.
CREATE OR REPLACE VIEW indexes AS
    SELECT substr(name, 9) AS name, version,
           json_extract_string(meta, '$.kind') AS kind,
           json_extract_string(meta, '$.type') AS index_type,
           path,
           json_extract_string(meta, '$.space') AS space,
           row_count AS count,
           CAST(json_extract(meta, '$.dim') AS INTEGER) AS dim,
           json_extract_string(meta, '$.action') AS action,
           meta AS manifest, is_current, run_id, created_at
    FROM datasets WHERE name LIKE 'indexes/%';

-- facts about the catalog itself: `data_root` when it is remote (s3://...), so that commands given only
-- the catalog file find the data; a local data root is not recorded (catalog and data move together)
CREATE TABLE IF NOT EXISTS settings (
    key               VARCHAR PRIMARY KEY,
    value             VARCHAR NOT NULL
);
