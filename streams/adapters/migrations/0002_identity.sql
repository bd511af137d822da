-- Identity resolution results, written by the ClickHouse sink from the identity stage's output.

CREATE TABLE IF NOT EXISTS {db}.identity_map
(
    identifier  String                  COMMENT 'kind:value, e.g. email:jane@example.com',
    kind        LowCardinality(String)  COMMENT 'Identifier kind: customer_id, login_id, email, phone, loyalty_id, social_handle, device_id, anonymous_id',
    customer_id String                  COMMENT 'Customer the identifier belongs to (the survivor once merges settle); empty when erased',
    updated_at  DateTime64(3, 'UTC')    COMMENT 'When the identity stage changed this mapping',
    version     UInt64                  COMMENT 'Monotonic version; the highest wins',
    erased      UInt8                   COMMENT '1 when erased on request (GDPR); the identifier links nothing any more'
)
ENGINE = ReplacingMergeTree(version)
ORDER BY identifier
COMMENT 'Identifier -> customer, latest version wins. Use identity_map_v.';

CREATE VIEW IF NOT EXISTS {db}.identity_map_v
COMMENT 'Current identifier -> customer mapping (erased identifiers excluded).'
AS SELECT identifier, kind, customer_id, updated_at FROM {db}.identity_map FINAL WHERE erased = 0;

CREATE TABLE IF NOT EXISTS {db}.customer_merges
(
    merge_id       String                COMMENT 'Deterministic id of the merge (replays de-duplicate)',
    survivor       String                COMMENT 'Customer id that survives (the oldest)',
    absorbed       String                COMMENT 'Customer id merged into the survivor; follow it to the survivor',
    via_identifier String                COMMENT 'The identifier whose event linked the two customers',
    event_id       String                COMMENT 'The linking event',
    identifiers    Array(String)         COMMENT 'Identifiers of the absorbed customer at merge time',
    merged_at      DateTime64(3, 'UTC')  COMMENT 'Event time of the linking event'
)
ENGINE = ReplacingMergeTree
ORDER BY (absorbed, merge_id)
COMMENT 'Every customer merge, so any old customer id can be followed to its survivor.';

CREATE TABLE IF NOT EXISTS {db}.identity_refusals
(
    refusal_id   String                  COMMENT 'Deterministic id (replays de-duplicate)',
    reason       LowCardinality(String)  COMMENT 'blocked_value, merge_cap, limit:<kind>',
    identifier   String                  COMMENT 'The identifier refused or quarantined, if one',
    customers    Array(String)           COMMENT 'Customers involved',
    event_id     String                  COMMENT 'Event that triggered the refusal',
    evidence     String                  COMMENT 'JSON evidence: what was seen and which limit it hit',
    refused_at   DateTime64(3, 'UTC')    COMMENT 'Event time'
)
ENGINE = ReplacingMergeTree
ORDER BY (reason, refusal_id)
COMMENT 'Merges and links the identity guards refused, with the reason and evidence.';

CREATE VIEW IF NOT EXISTS {db}.customer_touchpoints_v
COMMENT 'Every touchpoint with its current customer: the timeline of a customer is WHERE customer_id = ... ORDER BY occurred_at.'
AS SELECT m.customer_id AS customer_id, t.*
FROM {db}.touchpoints_v AS t
INNER JOIN {db}.identity_map_v AS m ON m.identifier = t.identity_key;
