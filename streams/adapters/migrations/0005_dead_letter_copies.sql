-- Issue 12: say when the stored copy of a dead letter is not the whole original, and give
-- the original's SHA-256 so a copy can be checked against the message it stands for.
-- A new migration: applied ones are never edited (their checksums are recorded).
ALTER TABLE {db}.dead_letters
    ADD COLUMN IF NOT EXISTS truncated Bool DEFAULT false
    COMMENT 'original holds only the first bytes: the dead letter was cut to fit the broker, or the value is over 64 KiB';
ALTER TABLE {db}.dead_letters
    ADD COLUMN IF NOT EXISTS original_sha256 String DEFAULT ''
    COMMENT 'Hex SHA-256 of the whole original value (from dlq.original.sha256 when the dead letter was cut); empty in rows written before this column';
