-- Every valid touchpoint, one row per event id. ReplacingMergeTree on a key that is a
-- pure function of the event makes replays harmless; the sink also passes an insert
-- de-duplication token per batch, so an identical replayed batch is dropped at once.
CREATE TABLE IF NOT EXISTS {db}.touchpoints
(
    event_id        String                          COMMENT 'Producer-assigned unique event id',
    channel         LowCardinality(String)          COMMENT 'web, mobile, social, contact_centre',
    event_type      LowCardinality(String)          COMMENT 'See the README event catalogue',
    occurred_at     DateTime64(3, 'UTC')            COMMENT 'When it happened (event time)',
    received_at     DateTime64(3, 'UTC')            COMMENT 'When the producing system received it',
    ingested_at     DateTime64(3, 'UTC')            COMMENT 'When the sink wrote it (version column)',
    source          LowCardinality(String)          COMMENT 'Producing system',
    identity_key    String                          COMMENT 'Anchor identifier of the event (strongest usable one), kind:value; joins identity_map',
    customer_id_at_ingest String                    COMMENT 'Customer the event resolved to when processed (may have merged since; see customer_touchpoints_v)',
    anonymous_id    String                          COMMENT 'Cookie / anonymous id (normalised), empty if none',
    device_id       String                          COMMENT 'Device id (lower-case), empty if none',
    customer_id     String                          COMMENT 'CRM customer id, empty if none',
    login_id        String                          COMMENT 'Login (lower-case), empty if none',
    email           String                          COMMENT 'Email (trimmed, lower-case), empty if none',
    phone           String                          COMMENT 'Phone in E.164, empty if none',
    social_handle   String                          COMMENT 'Social handle without @, lower-case, empty if none',
    loyalty_id      String                          COMMENT 'Loyalty id, empty if none',
    country         LowCardinality(String)          COMMENT 'ISO 3166-1 alpha-2, empty if unknown',
    lat             Nullable(Float64)               COMMENT 'Latitude, if known',
    lon             Nullable(Float64)               COMMENT 'Longitude, if known',
    city            String                          COMMENT 'City, if known',
    ip              String                          COMMENT 'Client IP, if known',
    user_agent      String                          COMMENT 'User agent, if known',
    payload_type    LowCardinality(String)          COMMENT 'web, mobile, social, contact_centre, commerce or empty',
    session_id      String                          COMMENT 'Web/app session id',
    success         Nullable(Bool)                  COMMENT 'Outcome of a login/checkout step, if reported',
    error_code      String                          COMMENT 'Failure code of a web/app step',
    amount          Nullable(Decimal(18, 4))        COMMENT 'Commerce amount in major units of currency',
    currency        LowCardinality(String)          COMMENT 'ISO 4217',
    order_id        String                          COMMENT 'Order id (commerce)',
    transaction_id  String                          COMMENT 'Payment transaction id (commerce)',
    merchant        String                          COMMENT 'Merchant (commerce)',
    payment_status  LowCardinality(String)          COMMENT 'approved, declined, failed, refunded',
    medium          LowCardinality(String)          COMMENT 'Contact-centre medium: call, chat, email',
    queue           LowCardinality(String)          COMMENT 'Contact-centre queue',
    wait_seconds    Nullable(Float32)               COMMENT 'Contact-centre wait',
    handle_seconds  Nullable(Float32)               COMMENT 'Contact-centre handle time',
    resolved        Nullable(Bool)                  COMMENT 'Contact resolved',
    is_complaint    Nullable(Bool)                  COMMENT 'Contact is a complaint',
    csat            Nullable(UInt8)                 COMMENT 'CSAT answer 1..5',
    nps             Nullable(UInt8)                 COMMENT 'NPS answer 0..10',
    sentiment       Nullable(Float32)               COMMENT 'Social sentiment -1..1',
    payload         String                          COMMENT 'The whole channel payload as JSON',
    properties      Map(String, String)             COMMENT 'Free-form event properties',
    consent         LowCardinality(String)          COMMENT 'Consent state captured with the event',
    kafka_partition UInt16                          COMMENT 'Partition of the valid topic it was read from',
    kafka_offset    UInt64                          COMMENT 'Offset in that partition'
)
ENGINE = ReplacingMergeTree(ingested_at)
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (identity_key, occurred_at, event_id)
SETTINGS non_replicated_deduplication_window = 1000
COMMENT 'Every valid touchpoint. Query through touchpoints_v (or add FINAL) to see each event once.';

CREATE VIEW IF NOT EXISTS {db}.touchpoints_v
COMMENT 'Touchpoints, each event exactly once (ReplacingMergeTree resolved with FINAL). Use this in BI tools.'
AS SELECT * FROM {db}.touchpoints FINAL;

CREATE TABLE IF NOT EXISTS {db}.dead_letters
(
    source_topic     LowCardinality(String)  COMMENT 'Topic the message was read from',
    source_partition UInt16                  COMMENT 'Its partition',
    source_offset    UInt64                  COMMENT 'Its offset',
    reason           LowCardinality(String)  COMMENT 'Machine-readable reason (see README)',
    detail           String                  COMMENT 'Human-readable detail',
    failed_at        DateTime64(3, 'UTC')    COMMENT 'When the pipeline rejected it',
    size_bytes       UInt32                  COMMENT 'Size of the original value',
    original         String                  COMMENT 'The original value bytes (first 64 KiB)'
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(failed_at)
ORDER BY (source_topic, source_partition, source_offset)
TTL toDateTime(failed_at) + INTERVAL 30 DAY
COMMENT 'Rejected messages, one row per source position; the dead-letter topic has the full bytes.';
