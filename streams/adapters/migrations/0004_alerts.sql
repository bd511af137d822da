-- Alerts raised by the detectors (issue 4), one row per alert id. The alert id is a hash
-- of (customer, rule, triggering event ids), so a replay writes the same id again and
-- ReplacingMergeTree keeps one row (the latest detection); occurred_at is part of the
-- alert too, so both copies land in the same partition and merge.
CREATE TABLE IF NOT EXISTS {db}.alerts
(
    alert_id     String                      COMMENT 'Deterministic id: hash of customer id, rule and triggering event ids',
    customer_id  String                      COMMENT 'Resolved customer the alert is about',
    rule         LowCardinality(String)      COMMENT 'Detector that fired (impossible_travel, velocity_burst, ...; see README)',
    severity     LowCardinality(String)      COMMENT 'info, low, medium, high or critical (configured per rule)',
    score        Float64                     COMMENT 'How far past the threshold; rule-specific, 1.0 = at the threshold',
    summary      String                      COMMENT 'Human explanation: baseline versus what was observed',
    event_ids    Array(String)               COMMENT 'Ids of the touchpoints that triggered the alert',
    evidence     Map(String, String)         COMMENT 'Observed values and the baseline/threshold they were compared with',
    occurred_at  DateTime64(3, 'UTC')        COMMENT 'Event time of the trigger (or the deadline that passed)',
    detected_at  DateTime64(3, 'UTC')        COMMENT 'When the pipeline raised it (version column: the latest detection wins)'
)
ENGINE = ReplacingMergeTree(detected_at)
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (customer_id, alert_id)
SETTINGS non_replicated_deduplication_window = 1000
COMMENT 'Alerts from the behavioural detectors, one row per alert id. Query through alerts_v (or add FINAL) to see each alert once.';

CREATE VIEW IF NOT EXISTS {db}.alerts_v
COMMENT 'Alerts, each exactly once (ReplacingMergeTree resolved with FINAL). Use this in BI tools.'
AS SELECT * FROM {db}.alerts FINAL;
