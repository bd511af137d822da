-- Rolling CX aggregates and the customer 360 for BI (issue 5).
--
-- Layers:
--   cx_partials          rows written by the aggregator (streams/aggregates.py): one partial per
--                        (minute, dims, source partition, pane), latest version wins.
--   customer_first_seen  first minute of every customer, fed by a materialized view.
--   cx_minute/hour/day   analyst views: plain columns, no -State/-Merge, no FINAL to remember.
--   alert_partials       alerts per minute, rule, severity (+ alerts_minute view).
--   customer_360         one row per customer, latest version wins (+ customer_360_v view).
--
-- Why the BI views aggregate cx_partials FINAL at query time instead of reading an
-- AggregatingMergeTree fed by a materialized view: a materialized view sees every INSERTED
-- row, not the replacement ReplacingMergeTree makes later. The aggregator re-emits a partial
-- with a higher version as it grows (rolling freshness) and re-emits identical rows after a
-- crash (replay), so sumState/quantilesTDigestState fed from inserts would count those
-- twice. Reading the latest version per key (FINAL) and merging at query time is exact and
-- idempotent; minutes roll up into hours and days because every measure is a sum, a set
-- union (uniqExact over the customer-id arrays) or a t-digest over the concatenated raw
-- wait/handle times. Only idempotent aggregates are kept by a materialized view:
-- customer_first_seen takes min(minute), and a minimum does not change when the same or a
-- bigger version of a partial is inserted again.
-- At larger scale, the same FINAL queries can feed refreshable materialized views
-- (REFRESH EVERY ...) that store closed hours/days, without changing the analyst views.

CREATE TABLE IF NOT EXISTS {db}.cx_partials
(
    minute              DateTime('UTC')                             COMMENT 'Start of the 1-minute event-time window (occurred_at), UTC',
    channel             LowCardinality(String)                      COMMENT 'web, mobile, social, contact_centre',
    event_type          LowCardinality(String)                      COMMENT 'Event type (see the README event catalogue)',
    country             LowCardinality(String)                      COMMENT 'ISO 3166-1 alpha-2 of the event context, empty if unknown',
    segment             LowCardinality(String)                      COMMENT 'Touchpoint segment: anonymous, contactable, registered, loyalty, vip (streams.aggregates.segment_of)',
    source_partition    UInt16                                      COMMENT 'Partition of the resolved-events topic that produced this partial',
    pane                UInt32                                      COMMENT 'Block of input offsets of that partition the partial covers (bounds the aggregator state)',
    version             UInt64                                      COMMENT 'Updates folded into this partial; the highest version of a key is the current one',
    updated_at          DateTime64(3, 'UTC')                        COMMENT 'Wall-clock time of the last update (informational, not part of the key)',
    events              UInt32                                      COMMENT 'Touchpoints',
    customers           Array(String)                               COMMENT 'Distinct customer ids (as resolved at event time) seen in the partial',
    orders              UInt32                                      COMMENT 'order_placed events',
    basket_items        UInt32                                      COMMENT 'Items on orders that report an item count',
    basket_orders       UInt32                                      COMMENT 'Orders that report an item count',
    checkouts_started   UInt32                                      COMMENT 'Web checkout_step events at the first step (cart)',
    payments_approved   UInt32                                      COMMENT 'Approved payment events',
    payment_failures    UInt32                                      COMMENT 'Declined or failed payment events',
    revenue             Map(LowCardinality(String), Decimal(18, 4)) COMMENT 'Approved payment amounts per ISO 4217 currency, major units',
    csat_responses      UInt32                                      COMMENT 'CSAT answers',
    csat_sum            UInt32                                      COMMENT 'Sum of CSAT answers (1..5)',
    nps_promoters       UInt32                                      COMMENT 'NPS answers 9..10',
    nps_passives        UInt32                                      COMMENT 'NPS answers 7..8',
    nps_detractors      UInt32                                      COMMENT 'NPS answers 0..6',
    sentiment_count     UInt32                                      COMMENT 'Social events with a sentiment score',
    sentiment_sum       Float64                                     COMMENT 'Sum of social sentiment scores (-1..1)',
    contacts            UInt32                                      COMMENT 'Contact-centre contacts: call, chat, email, complaint',
    wait_seconds        Array(Float32)                              COMMENT 'Raw wait times of the contacts (for percentiles)',
    handle_seconds      Array(Float32)                              COMMENT 'Raw handle times of the contacts (for percentiles)',
    fcr_eligible        UInt32                                      COMMENT 'Contacts that report whether they were resolved',
    fcr_resolved        UInt32                                      COMMENT 'Contacts resolved without a transfer (first-contact resolution)',
    repeat_contacts     UInt32                                      COMMENT 'Contacts by a customer with another contact in the previous 7 days',
    channel_switches    UInt32                                      COMMENT 'Contacts within 1 hour after a failed web/mobile checkout or login of the same customer',
    complaints          UInt32                                      COMMENT 'Contact-centre complaints'
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(minute)
ORDER BY (minute, channel, event_type, country, segment, source_partition, pane)
TTL minute + INTERVAL 400 DAY
SETTINGS non_replicated_deduplication_window = 1000
COMMENT 'Partial CX aggregates per minute, dimensions, source partition and pane; the highest version of a key is current. Analysts: use cx_minute, cx_hour, cx_day.';

CREATE TABLE IF NOT EXISTS {db}.customer_first_seen
(
    customer_id         String                                          COMMENT 'Customer id as resolved at event time',
    first_minute        SimpleAggregateFunction(min, DateTime('UTC'))   COMMENT 'First minute with an aggregated event of the customer'
)
ENGINE = AggregatingMergeTree
ORDER BY customer_id
COMMENT 'First minute each customer was seen in cx_partials (new vs returning customers). Fed by customer_first_seen_mv; min is idempotent, so re-inserted partials cannot skew it.';

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.customer_first_seen_mv TO {db}.customer_first_seen
(
    customer_id         String                                          COMMENT 'Customer id as resolved at event time',
    first_minute        SimpleAggregateFunction(min, DateTime('UTC'))   COMMENT 'Earliest minute of the inserted block'
)
COMMENT 'Keeps customer_first_seen: the earliest minute of every customer id inserted into cx_partials'
AS SELECT customer_id, min(minute) AS first_minute
FROM {db}.cx_partials
ARRAY JOIN customers AS customer_id
GROUP BY customer_id;

CREATE VIEW IF NOT EXISTS {db}.cx_minute
(
    minute                         DateTime('UTC')             COMMENT 'Start of the minute (event time, UTC)',
    channel                        LowCardinality(String)      COMMENT 'web, mobile, social, contact_centre',
    event_type                     LowCardinality(String)      COMMENT 'Event type',
    country                        LowCardinality(String)      COMMENT 'ISO 3166-1 alpha-2, empty if unknown',
    segment                        LowCardinality(String)      COMMENT 'Touchpoint segment: anonymous, contactable, registered, loyalty, vip',
    events                         UInt64                      COMMENT 'Touchpoints',
    unique_customers               UInt64                      COMMENT 'Distinct customers (ids as resolved at event time)',
    new_customers                  UInt64                      COMMENT 'Distinct customers first seen in this minute',
    returning_customers            UInt64                      COMMENT 'Distinct customers first seen before this minute',
    orders                         UInt64                      COMMENT 'Orders placed',
    revenue                        Map(String, Decimal(38, 4)) COMMENT 'Approved payments per currency, major units',
    payments_approved              UInt64                      COMMENT 'Approved payments',
    avg_basket                     Nullable(Float64)           COMMENT 'Items per order (orders that report items)',
    checkouts_started              UInt64                      COMMENT 'Web checkouts started (cart step)',
    conversion_rate                Nullable(Float64)           COMMENT 'orders / checkouts_started; meaningful rolled up over event types',
    payment_failures               UInt64                      COMMENT 'Declined or failed payments',
    csat_responses                 UInt64                      COMMENT 'CSAT answers',
    csat_sum                       UInt64                      COMMENT 'Sum of CSAT answers (to roll csat_avg up)',
    csat_avg                       Nullable(Float64)           COMMENT 'Average CSAT, 1..5',
    nps_responses                  UInt64                      COMMENT 'NPS answers',
    nps_promoters                  UInt64                      COMMENT 'NPS answers 9..10',
    nps_detractors                 UInt64                      COMMENT 'NPS answers 0..6',
    nps                            Nullable(Float64)           COMMENT 'Net promoter score: 100 * (promoters - detractors) / answers',
    sentiment_count                UInt64                      COMMENT 'Social events with a sentiment score',
    sentiment_avg                  Nullable(Float64)           COMMENT 'Average social sentiment, -1..1',
    contacts                       UInt64                      COMMENT 'Contact-centre contacts (call, chat, email, complaint)',
    wait_p50                       Nullable(Float64)           COMMENT 'Median contact wait, seconds (t-digest estimate)',
    wait_p90                       Nullable(Float64)           COMMENT '90th percentile contact wait, seconds (t-digest estimate)',
    handle_p50                     Nullable(Float64)           COMMENT 'Median handle time, seconds (t-digest estimate)',
    handle_p90                     Nullable(Float64)           COMMENT '90th percentile handle time, seconds (t-digest estimate)',
    fcr_eligible                   UInt64                      COMMENT 'Contacts that report whether they were resolved',
    fcr_rate                       Nullable(Float64)           COMMENT 'First-contact resolution: share of fcr_eligible contacts resolved without a transfer',
    repeat_contacts                UInt64                      COMMENT 'Contacts by a customer with another contact in the previous 7 days',
    repeat_contact_rate            Nullable(Float64)           COMMENT 'repeat_contacts / contacts',
    channel_switches_after_failure UInt64                      COMMENT 'Contacts within 1 hour after a failed web/mobile checkout or login of the same customer',
    complaints                     UInt64                      COMMENT 'Complaints'
)
COMMENT 'CX measures per minute, channel, event type, country and segment (event time, UTC), from the latest partials. Ratios are per row: to roll them up, divide the sums of their parts.'
AS SELECT
    m.minute AS minute,
    m.channel AS channel,
    m.event_type AS event_type,
    m.country AS country,
    m.segment AS segment,
    m.events AS events,
    m.unique_customers AS unique_customers,
    n.new_customers AS new_customers,
    m.unique_customers - n.new_customers AS returning_customers,
    m.orders AS orders,
    m.revenue AS revenue,
    m.payments_approved AS payments_approved,
    if(m.basket_orders = 0, NULL, m.basket_items / m.basket_orders) AS avg_basket,
    m.checkouts_started AS checkouts_started,
    if(m.checkouts_started = 0, NULL, m.orders / m.checkouts_started) AS conversion_rate,
    m.payment_failures AS payment_failures,
    m.csat_responses AS csat_responses,
    m.csat_sum AS csat_sum,
    if(m.csat_responses = 0, NULL, m.csat_sum / m.csat_responses) AS csat_avg,
    m.nps_promoters + m.nps_passives + m.nps_detractors AS nps_responses,
    m.nps_promoters AS nps_promoters,
    m.nps_detractors AS nps_detractors,
    if(m.nps_promoters + m.nps_passives + m.nps_detractors = 0, NULL, 100 * (m.nps_promoters - m.nps_detractors) / (m.nps_promoters + m.nps_passives + m.nps_detractors)) AS nps,
    m.sentiment_count AS sentiment_count,
    if(m.sentiment_count = 0, NULL, m.sentiment_sum / m.sentiment_count) AS sentiment_avg,
    m.contacts AS contacts,
    if(m.waits = 0, NULL, m.wait_q[1]) AS wait_p50,
    if(m.waits = 0, NULL, m.wait_q[2]) AS wait_p90,
    if(m.handles = 0, NULL, m.handle_q[1]) AS handle_p50,
    if(m.handles = 0, NULL, m.handle_q[2]) AS handle_p90,
    m.fcr_eligible AS fcr_eligible,
    if(m.fcr_eligible = 0, NULL, m.fcr_resolved / m.fcr_eligible) AS fcr_rate,
    m.repeat_contacts AS repeat_contacts,
    if(m.contacts = 0, NULL, m.repeat_contacts / m.contacts) AS repeat_contact_rate,
    m.channel_switches AS channel_switches_after_failure,
    m.complaints AS complaints
FROM
(
    SELECT
        minute AS minute, channel, event_type, country, segment,
        sum(events) AS events,
        uniqExactArray(customers) AS unique_customers,
        sum(orders) AS orders,
        sumMap(revenue) AS revenue,
        sum(payments_approved) AS payments_approved,
        sum(basket_items) AS basket_items,
        sum(basket_orders) AS basket_orders,
        sum(checkouts_started) AS checkouts_started,
        sum(payment_failures) AS payment_failures,
        sum(csat_responses) AS csat_responses,
        sum(csat_sum) AS csat_sum,
        sum(nps_promoters) AS nps_promoters,
        sum(nps_passives) AS nps_passives,
        sum(nps_detractors) AS nps_detractors,
        sum(sentiment_count) AS sentiment_count,
        sum(sentiment_sum) AS sentiment_sum,
        sum(contacts) AS contacts,
        sum(length(wait_seconds)) AS waits,
        quantilesTDigestArray(0.5, 0.9)(wait_seconds) AS wait_q,
        sum(length(handle_seconds)) AS handles,
        quantilesTDigestArray(0.5, 0.9)(handle_seconds) AS handle_q,
        sum(fcr_eligible) AS fcr_eligible,
        sum(fcr_resolved) AS fcr_resolved,
        sum(repeat_contacts) AS repeat_contacts,
        sum(channel_switches) AS channel_switches,
        sum(complaints) AS complaints
    FROM {db}.cx_partials FINAL
    GROUP BY minute, channel, event_type, country, segment
) AS m
LEFT JOIN
(
    SELECT
        p.minute AS minute, p.channel AS channel, p.event_type AS event_type, p.country AS country, p.segment AS segment,
        uniqExactIf(customer_id, f.first_minute = p.minute) AS new_customers
    FROM (SELECT minute, channel, event_type, country, segment, customers FROM {db}.cx_partials FINAL) AS p
    ARRAY JOIN p.customers AS customer_id
    INNER JOIN (SELECT customer_id, min(first_minute) AS first_minute FROM {db}.customer_first_seen GROUP BY customer_id) AS f
        ON f.customer_id = customer_id
    GROUP BY minute, channel, event_type, country, segment
) AS n
ON n.minute = m.minute AND n.channel = m.channel AND n.event_type = m.event_type AND n.country = m.country AND n.segment = m.segment;

CREATE VIEW IF NOT EXISTS {db}.cx_hour
(
    hour                           DateTime('UTC')             COMMENT 'Start of the hour (event time, UTC)',
    channel                        LowCardinality(String)      COMMENT 'web, mobile, social, contact_centre',
    event_type                     LowCardinality(String)      COMMENT 'Event type',
    country                        LowCardinality(String)      COMMENT 'ISO 3166-1 alpha-2, empty if unknown',
    segment                        LowCardinality(String)      COMMENT 'Touchpoint segment: anonymous, contactable, registered, loyalty, vip',
    events                         UInt64                      COMMENT 'Touchpoints',
    unique_customers               UInt64                      COMMENT 'Distinct customers (ids as resolved at event time)',
    new_customers                  UInt64                      COMMENT 'Distinct customers first seen in this hour',
    returning_customers            UInt64                      COMMENT 'Distinct customers first seen before this hour',
    orders                         UInt64                      COMMENT 'Orders placed',
    revenue                        Map(String, Decimal(38, 4)) COMMENT 'Approved payments per currency, major units',
    payments_approved              UInt64                      COMMENT 'Approved payments',
    avg_basket                     Nullable(Float64)           COMMENT 'Items per order (orders that report items)',
    checkouts_started              UInt64                      COMMENT 'Web checkouts started (cart step)',
    conversion_rate                Nullable(Float64)           COMMENT 'orders / checkouts_started; meaningful rolled up over event types',
    payment_failures               UInt64                      COMMENT 'Declined or failed payments',
    csat_responses                 UInt64                      COMMENT 'CSAT answers',
    csat_sum                       UInt64                      COMMENT 'Sum of CSAT answers (to roll csat_avg up)',
    csat_avg                       Nullable(Float64)           COMMENT 'Average CSAT, 1..5',
    nps_responses                  UInt64                      COMMENT 'NPS answers',
    nps_promoters                  UInt64                      COMMENT 'NPS answers 9..10',
    nps_detractors                 UInt64                      COMMENT 'NPS answers 0..6',
    nps                            Nullable(Float64)           COMMENT 'Net promoter score: 100 * (promoters - detractors) / answers',
    sentiment_count                UInt64                      COMMENT 'Social events with a sentiment score',
    sentiment_avg                  Nullable(Float64)           COMMENT 'Average social sentiment, -1..1',
    contacts                       UInt64                      COMMENT 'Contact-centre contacts (call, chat, email, complaint)',
    wait_p50                       Nullable(Float64)           COMMENT 'Median contact wait, seconds (t-digest estimate)',
    wait_p90                       Nullable(Float64)           COMMENT '90th percentile contact wait, seconds (t-digest estimate)',
    handle_p50                     Nullable(Float64)           COMMENT 'Median handle time, seconds (t-digest estimate)',
    handle_p90                     Nullable(Float64)           COMMENT '90th percentile handle time, seconds (t-digest estimate)',
    fcr_eligible                   UInt64                      COMMENT 'Contacts that report whether they were resolved',
    fcr_rate                       Nullable(Float64)           COMMENT 'First-contact resolution: share of fcr_eligible contacts resolved without a transfer',
    repeat_contacts                UInt64                      COMMENT 'Contacts by a customer with another contact in the previous 7 days',
    repeat_contact_rate            Nullable(Float64)           COMMENT 'repeat_contacts / contacts',
    channel_switches_after_failure UInt64                      COMMENT 'Contacts within 1 hour after a failed web/mobile checkout or login of the same customer',
    complaints                     UInt64                      COMMENT 'Complaints'
)
COMMENT 'CX measures per hour, channel, event type, country and segment (event time, UTC), from the latest partials. Ratios are per row: to roll them up, divide the sums of their parts.'
AS SELECT
    m.hour AS hour,
    m.channel AS channel,
    m.event_type AS event_type,
    m.country AS country,
    m.segment AS segment,
    m.events AS events,
    m.unique_customers AS unique_customers,
    n.new_customers AS new_customers,
    m.unique_customers - n.new_customers AS returning_customers,
    m.orders AS orders,
    m.revenue AS revenue,
    m.payments_approved AS payments_approved,
    if(m.basket_orders = 0, NULL, m.basket_items / m.basket_orders) AS avg_basket,
    m.checkouts_started AS checkouts_started,
    if(m.checkouts_started = 0, NULL, m.orders / m.checkouts_started) AS conversion_rate,
    m.payment_failures AS payment_failures,
    m.csat_responses AS csat_responses,
    m.csat_sum AS csat_sum,
    if(m.csat_responses = 0, NULL, m.csat_sum / m.csat_responses) AS csat_avg,
    m.nps_promoters + m.nps_passives + m.nps_detractors AS nps_responses,
    m.nps_promoters AS nps_promoters,
    m.nps_detractors AS nps_detractors,
    if(m.nps_promoters + m.nps_passives + m.nps_detractors = 0, NULL, 100 * (m.nps_promoters - m.nps_detractors) / (m.nps_promoters + m.nps_passives + m.nps_detractors)) AS nps,
    m.sentiment_count AS sentiment_count,
    if(m.sentiment_count = 0, NULL, m.sentiment_sum / m.sentiment_count) AS sentiment_avg,
    m.contacts AS contacts,
    if(m.waits = 0, NULL, m.wait_q[1]) AS wait_p50,
    if(m.waits = 0, NULL, m.wait_q[2]) AS wait_p90,
    if(m.handles = 0, NULL, m.handle_q[1]) AS handle_p50,
    if(m.handles = 0, NULL, m.handle_q[2]) AS handle_p90,
    m.fcr_eligible AS fcr_eligible,
    if(m.fcr_eligible = 0, NULL, m.fcr_resolved / m.fcr_eligible) AS fcr_rate,
    m.repeat_contacts AS repeat_contacts,
    if(m.contacts = 0, NULL, m.repeat_contacts / m.contacts) AS repeat_contact_rate,
    m.channel_switches AS channel_switches_after_failure,
    m.complaints AS complaints
FROM
(
    SELECT
        toStartOfHour(minute) AS hour, channel, event_type, country, segment,
        sum(events) AS events,
        uniqExactArray(customers) AS unique_customers,
        sum(orders) AS orders,
        sumMap(revenue) AS revenue,
        sum(payments_approved) AS payments_approved,
        sum(basket_items) AS basket_items,
        sum(basket_orders) AS basket_orders,
        sum(checkouts_started) AS checkouts_started,
        sum(payment_failures) AS payment_failures,
        sum(csat_responses) AS csat_responses,
        sum(csat_sum) AS csat_sum,
        sum(nps_promoters) AS nps_promoters,
        sum(nps_passives) AS nps_passives,
        sum(nps_detractors) AS nps_detractors,
        sum(sentiment_count) AS sentiment_count,
        sum(sentiment_sum) AS sentiment_sum,
        sum(contacts) AS contacts,
        sum(length(wait_seconds)) AS waits,
        quantilesTDigestArray(0.5, 0.9)(wait_seconds) AS wait_q,
        sum(length(handle_seconds)) AS handles,
        quantilesTDigestArray(0.5, 0.9)(handle_seconds) AS handle_q,
        sum(fcr_eligible) AS fcr_eligible,
        sum(fcr_resolved) AS fcr_resolved,
        sum(repeat_contacts) AS repeat_contacts,
        sum(channel_switches) AS channel_switches,
        sum(complaints) AS complaints
    FROM {db}.cx_partials FINAL
    GROUP BY hour, channel, event_type, country, segment
) AS m
LEFT JOIN
(
    SELECT
        toStartOfHour(p.minute) AS hour, p.channel AS channel, p.event_type AS event_type, p.country AS country, p.segment AS segment,
        uniqExactIf(customer_id, toStartOfHour(f.first_minute) = toStartOfHour(p.minute)) AS new_customers
    FROM (SELECT minute, channel, event_type, country, segment, customers FROM {db}.cx_partials FINAL) AS p
    ARRAY JOIN p.customers AS customer_id
    INNER JOIN (SELECT customer_id, min(first_minute) AS first_minute FROM {db}.customer_first_seen GROUP BY customer_id) AS f
        ON f.customer_id = customer_id
    GROUP BY hour, channel, event_type, country, segment
) AS n
ON n.hour = m.hour AND n.channel = m.channel AND n.event_type = m.event_type AND n.country = m.country AND n.segment = m.segment;

CREATE VIEW IF NOT EXISTS {db}.cx_day
(
    day                            Date                        COMMENT 'Day (event time, UTC)',
    channel                        LowCardinality(String)      COMMENT 'web, mobile, social, contact_centre',
    event_type                     LowCardinality(String)      COMMENT 'Event type',
    country                        LowCardinality(String)      COMMENT 'ISO 3166-1 alpha-2, empty if unknown',
    segment                        LowCardinality(String)      COMMENT 'Touchpoint segment: anonymous, contactable, registered, loyalty, vip',
    events                         UInt64                      COMMENT 'Touchpoints',
    unique_customers               UInt64                      COMMENT 'Distinct customers (ids as resolved at event time)',
    new_customers                  UInt64                      COMMENT 'Distinct customers first seen in this day',
    returning_customers            UInt64                      COMMENT 'Distinct customers first seen before this day',
    orders                         UInt64                      COMMENT 'Orders placed',
    revenue                        Map(String, Decimal(38, 4)) COMMENT 'Approved payments per currency, major units',
    payments_approved              UInt64                      COMMENT 'Approved payments',
    avg_basket                     Nullable(Float64)           COMMENT 'Items per order (orders that report items)',
    checkouts_started              UInt64                      COMMENT 'Web checkouts started (cart step)',
    conversion_rate                Nullable(Float64)           COMMENT 'orders / checkouts_started; meaningful rolled up over event types',
    payment_failures               UInt64                      COMMENT 'Declined or failed payments',
    csat_responses                 UInt64                      COMMENT 'CSAT answers',
    csat_sum                       UInt64                      COMMENT 'Sum of CSAT answers (to roll csat_avg up)',
    csat_avg                       Nullable(Float64)           COMMENT 'Average CSAT, 1..5',
    nps_responses                  UInt64                      COMMENT 'NPS answers',
    nps_promoters                  UInt64                      COMMENT 'NPS answers 9..10',
    nps_detractors                 UInt64                      COMMENT 'NPS answers 0..6',
    nps                            Nullable(Float64)           COMMENT 'Net promoter score: 100 * (promoters - detractors) / answers',
    sentiment_count                UInt64                      COMMENT 'Social events with a sentiment score',
    sentiment_avg                  Nullable(Float64)           COMMENT 'Average social sentiment, -1..1',
    contacts                       UInt64                      COMMENT 'Contact-centre contacts (call, chat, email, complaint)',
    wait_p50                       Nullable(Float64)           COMMENT 'Median contact wait, seconds (t-digest estimate)',
    wait_p90                       Nullable(Float64)           COMMENT '90th percentile contact wait, seconds (t-digest estimate)',
    handle_p50                     Nullable(Float64)           COMMENT 'Median handle time, seconds (t-digest estimate)',
    handle_p90                     Nullable(Float64)           COMMENT '90th percentile handle time, seconds (t-digest estimate)',
    fcr_eligible                   UInt64                      COMMENT 'Contacts that report whether they were resolved',
    fcr_rate                       Nullable(Float64)           COMMENT 'First-contact resolution: share of fcr_eligible contacts resolved without a transfer',
    repeat_contacts                UInt64                      COMMENT 'Contacts by a customer with another contact in the previous 7 days',
    repeat_contact_rate            Nullable(Float64)           COMMENT 'repeat_contacts / contacts',
    channel_switches_after_failure UInt64                      COMMENT 'Contacts within 1 hour after a failed web/mobile checkout or login of the same customer',
    complaints                     UInt64                      COMMENT 'Complaints'
)
COMMENT 'CX measures per day, channel, event type, country and segment (event time, UTC), from the latest partials. Ratios are per row: to roll them up, divide the sums of their parts.'
AS SELECT
    m.day AS day,
    m.channel AS channel,
    m.event_type AS event_type,
    m.country AS country,
    m.segment AS segment,
    m.events AS events,
    m.unique_customers AS unique_customers,
    n.new_customers AS new_customers,
    m.unique_customers - n.new_customers AS returning_customers,
    m.orders AS orders,
    m.revenue AS revenue,
    m.payments_approved AS payments_approved,
    if(m.basket_orders = 0, NULL, m.basket_items / m.basket_orders) AS avg_basket,
    m.checkouts_started AS checkouts_started,
    if(m.checkouts_started = 0, NULL, m.orders / m.checkouts_started) AS conversion_rate,
    m.payment_failures AS payment_failures,
    m.csat_responses AS csat_responses,
    m.csat_sum AS csat_sum,
    if(m.csat_responses = 0, NULL, m.csat_sum / m.csat_responses) AS csat_avg,
    m.nps_promoters + m.nps_passives + m.nps_detractors AS nps_responses,
    m.nps_promoters AS nps_promoters,
    m.nps_detractors AS nps_detractors,
    if(m.nps_promoters + m.nps_passives + m.nps_detractors = 0, NULL, 100 * (m.nps_promoters - m.nps_detractors) / (m.nps_promoters + m.nps_passives + m.nps_detractors)) AS nps,
    m.sentiment_count AS sentiment_count,
    if(m.sentiment_count = 0, NULL, m.sentiment_sum / m.sentiment_count) AS sentiment_avg,
    m.contacts AS contacts,
    if(m.waits = 0, NULL, m.wait_q[1]) AS wait_p50,
    if(m.waits = 0, NULL, m.wait_q[2]) AS wait_p90,
    if(m.handles = 0, NULL, m.handle_q[1]) AS handle_p50,
    if(m.handles = 0, NULL, m.handle_q[2]) AS handle_p90,
    m.fcr_eligible AS fcr_eligible,
    if(m.fcr_eligible = 0, NULL, m.fcr_resolved / m.fcr_eligible) AS fcr_rate,
    m.repeat_contacts AS repeat_contacts,
    if(m.contacts = 0, NULL, m.repeat_contacts / m.contacts) AS repeat_contact_rate,
    m.channel_switches AS channel_switches_after_failure,
    m.complaints AS complaints
FROM
(
    SELECT
        toDate(minute) AS day, channel, event_type, country, segment,
        sum(events) AS events,
        uniqExactArray(customers) AS unique_customers,
        sum(orders) AS orders,
        sumMap(revenue) AS revenue,
        sum(payments_approved) AS payments_approved,
        sum(basket_items) AS basket_items,
        sum(basket_orders) AS basket_orders,
        sum(checkouts_started) AS checkouts_started,
        sum(payment_failures) AS payment_failures,
        sum(csat_responses) AS csat_responses,
        sum(csat_sum) AS csat_sum,
        sum(nps_promoters) AS nps_promoters,
        sum(nps_passives) AS nps_passives,
        sum(nps_detractors) AS nps_detractors,
        sum(sentiment_count) AS sentiment_count,
        sum(sentiment_sum) AS sentiment_sum,
        sum(contacts) AS contacts,
        sum(length(wait_seconds)) AS waits,
        quantilesTDigestArray(0.5, 0.9)(wait_seconds) AS wait_q,
        sum(length(handle_seconds)) AS handles,
        quantilesTDigestArray(0.5, 0.9)(handle_seconds) AS handle_q,
        sum(fcr_eligible) AS fcr_eligible,
        sum(fcr_resolved) AS fcr_resolved,
        sum(repeat_contacts) AS repeat_contacts,
        sum(channel_switches) AS channel_switches,
        sum(complaints) AS complaints
    FROM {db}.cx_partials FINAL
    GROUP BY day, channel, event_type, country, segment
) AS m
LEFT JOIN
(
    SELECT
        toDate(p.minute) AS day, p.channel AS channel, p.event_type AS event_type, p.country AS country, p.segment AS segment,
        uniqExactIf(customer_id, toDate(f.first_minute) = toDate(p.minute)) AS new_customers
    FROM (SELECT minute, channel, event_type, country, segment, customers FROM {db}.cx_partials FINAL) AS p
    ARRAY JOIN p.customers AS customer_id
    INNER JOIN (SELECT customer_id, min(first_minute) AS first_minute FROM {db}.customer_first_seen GROUP BY customer_id) AS f
        ON f.customer_id = customer_id
    GROUP BY day, channel, event_type, country, segment
) AS n
ON n.day = m.day AND n.channel = m.channel AND n.event_type = m.event_type AND n.country = m.country AND n.segment = m.segment;

CREATE TABLE IF NOT EXISTS {db}.alert_partials
(
    minute              DateTime('UTC')         COMMENT 'Start of the 1-minute window of the alert time, UTC',
    rule                LowCardinality(String)  COMMENT 'Alert rule',
    severity            LowCardinality(String)  COMMENT 'Alert severity',
    source_partition    UInt16                  COMMENT 'Partition of the aggregator that counted them',
    version             UInt64                  COMMENT 'Updates folded into this partial; the highest version of a key is the current one',
    updated_at          DateTime64(3, 'UTC')    COMMENT 'Wall-clock time of the emission (informational)',
    alerts              UInt32                  COMMENT 'Alerts raised'
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(minute)
ORDER BY (minute, rule, severity, source_partition)
TTL minute + INTERVAL 400 DAY
SETTINGS non_replicated_deduplication_window = 1000
COMMENT 'Partial alert counts per minute, rule, severity and source partition; the highest version of a key is current. Analysts: use alerts_minute.';

CREATE VIEW IF NOT EXISTS {db}.alerts_minute
(
    minute      DateTime('UTC')         COMMENT 'Start of the minute (alert time, UTC)',
    rule        LowCardinality(String)  COMMENT 'Alert rule',
    severity    LowCardinality(String)  COMMENT 'Alert severity',
    alerts      UInt64                  COMMENT 'Alerts raised'
)
COMMENT 'Alerts per minute, rule and severity (roll up with toStartOfHour(minute) and sum(alerts)).'
AS SELECT minute, rule, severity, sum(alerts) AS alerts
FROM {db}.alert_partials FINAL
GROUP BY minute, rule, severity;

-- One row per customer id, written per batch for the customers the batch touched. No TTL:
-- lifetime measures must outlive the 400 days of the partials. A customer absorbed by an
-- identity merge keeps its row with merged_into set; customer_360_v folds it into the
-- survivor (two levels of merges deep).
CREATE TABLE IF NOT EXISTS {db}.customer_360
(
    customer_id         String                                      COMMENT 'Customer id as resolved by identity stitching',
    version             UInt64                                      COMMENT 'Updates folded into this summary; the highest version is current',
    updated_at          DateTime64(3, 'UTC')                        COMMENT 'Wall-clock time of the last update (informational)',
    first_seen          DateTime64(3, 'UTC')                        COMMENT 'Earliest event time of the customer',
    last_seen           DateTime64(3, 'UTC')                        COMMENT 'Latest event time of the customer',
    events              UInt64                                      COMMENT 'Touchpoints',
    channels            Array(LowCardinality(String))               COMMENT 'Channels used, sorted',
    identifier_hashes   Array(UInt64)                               COMMENT 'Hashes of the distinct identifiers seen (kind:value, no PII), at most 64',
    orders              UInt32                                      COMMENT 'Orders placed',
    payments            UInt32                                      COMMENT 'Approved payments',
    lifetime_value      Map(LowCardinality(String), Decimal(18, 4)) COMMENT 'Approved payments per currency, major units',
    contacts            UInt32                                      COMMENT 'Contact-centre contacts',
    complaints          UInt32                                      COMMENT 'Complaints',
    last_csat           Nullable(UInt8)                             COMMENT 'Latest CSAT answer by event time (1..5)',
    last_csat_at        Nullable(DateTime64(3, 'UTC'))              COMMENT 'When it was given',
    last_nps            Nullable(UInt8)                             COMMENT 'Latest NPS answer by event time (0..10)',
    last_nps_at         Nullable(DateTime64(3, 'UTC'))              COMMENT 'When it was given',
    sentiment_count     UInt32                                      COMMENT 'Social events with a sentiment score',
    sentiment_sum       Float64                                     COMMENT 'Sum of their sentiment scores',
    sentiment_recent    Nullable(Float64)                           COMMENT 'Mean sentiment of the latest 5 scored social events (by event time)',
    open_alerts         Array(LowCardinality(String))               COMMENT 'Rules of the alerts open for the customer',
    segment             LowCardinality(String)                      COMMENT 'Highest touchpoint segment seen (anonymous < contactable < registered < loyalty < vip)',
    merged_into         String                                      COMMENT 'Survivor id if this customer was absorbed by a merge, else empty'
)
ENGINE = ReplacingMergeTree(version)
ORDER BY customer_id
COMMENT 'Customer 360 summaries, one per customer id, latest version wins. Analysts: use customer_360_v.';

CREATE VIEW IF NOT EXISTS {db}.customer_360_v
(
    customer_id         String                          COMMENT 'Customer id (survivor of any merges)',
    first_seen          DateTime64(3, 'UTC')            COMMENT 'Earliest event time',
    last_seen           DateTime64(3, 'UTC')            COMMENT 'Latest event time',
    events              UInt64                          COMMENT 'Touchpoints',
    channels            Array(String)                   COMMENT 'Channels used, sorted',
    identifiers_count   UInt64                          COMMENT 'Distinct identifiers linked to the customer (up to 64 per merged id)',
    orders              UInt64                          COMMENT 'Orders placed',
    payments            UInt64                          COMMENT 'Approved payments',
    lifetime_value      Map(String, Decimal(38, 4))     COMMENT 'Approved payments per currency, major units',
    contacts            UInt64                          COMMENT 'Contact-centre contacts',
    complaints          UInt64                          COMMENT 'Complaints',
    last_csat           Nullable(UInt8)                 COMMENT 'Latest CSAT answer (1..5)',
    last_csat_at        Nullable(DateTime64(3, 'UTC'))  COMMENT 'When it was given',
    last_nps            Nullable(UInt8)                 COMMENT 'Latest NPS answer (0..10)',
    last_nps_at         Nullable(DateTime64(3, 'UTC'))  COMMENT 'When it was given',
    sentiment_avg       Nullable(Float64)               COMMENT 'Average social sentiment, -1..1',
    sentiment_recent    Nullable(Float64)               COMMENT 'Mean sentiment of the latest scored social events',
    sentiment_trend     Nullable(Float64)               COMMENT 'sentiment_recent - sentiment_avg: above 0 improving, below 0 worsening',
    open_alerts         UInt64                          COMMENT 'Open alerts (distinct rules)',
    segment             String                          COMMENT 'Highest touchpoint segment seen',
    merged_ids          UInt64                          COMMENT 'Other customer ids merged into this one',
    household           UInt8                           COMMENT '1: a household, the own customer of a shared device or email (identity found it shared): its touchpoints belong to no one person'
)
COMMENT 'One row per customer: the latest customer_360 summaries with merged ids folded into their survivor (two merge levels).'
AS SELECT
    root AS customer_id,
    min(c.first_seen) AS first_seen,
    max(c.last_seen) AS last_seen,
    sum(c.events) AS events,
    arraySort(groupUniqArrayArray(c.channels)) AS channels,
    length(groupUniqArrayArray(c.identifier_hashes)) AS identifiers_count,
    sum(c.orders) AS orders,
    sum(c.payments) AS payments,
    sumMap(c.lifetime_value) AS lifetime_value,
    sum(c.contacts) AS contacts,
    sum(c.complaints) AS complaints,
    argMax(c.last_csat, c.last_csat_at) AS last_csat,
    max(c.last_csat_at) AS last_csat_at,
    argMax(c.last_nps, c.last_nps_at) AS last_nps,
    max(c.last_nps_at) AS last_nps_at,
    if(sum(c.sentiment_count) = 0, NULL, sum(c.sentiment_sum) / sum(c.sentiment_count)) AS sentiment_avg,
    argMax(c.sentiment_recent, c.last_seen) AS sentiment_recent,
    sentiment_recent - sentiment_avg AS sentiment_trend,
    length(groupUniqArrayArray(c.open_alerts)) AS open_alerts,
    ['anonymous', 'contactable', 'registered', 'loyalty', 'vip'][max(indexOf(['anonymous', 'contactable', 'registered', 'loyalty', 'vip'], c.segment))] AS segment,
    count() - 1 AS merged_ids,
    toUInt8(startsWith(root, 'h')) AS household
FROM
(
    SELECT
        c.*,
        if(c.merged_into = '', c.customer_id, if(m.merged_into = '', c.merged_into, m.merged_into)) AS root
    FROM (SELECT * FROM {db}.customer_360 FINAL) AS c
    LEFT JOIN (SELECT customer_id, merged_into FROM {db}.customer_360 FINAL WHERE merged_into != '') AS m
        ON m.customer_id = c.merged_into
) AS c
GROUP BY root;
