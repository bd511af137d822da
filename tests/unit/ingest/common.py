"""What the ingest unit tests share: the codec of the repository's schemas, the clock they
stamp events with, the default policy."""

from __future__ import annotations

import time
from pathlib import Path

from streams.ingest.stage import IngestPolicy
from streams.wire.codec import TOUCHPOINT_SUBJECT, AvroCodec, SchemaRegistry

CODEC = AvroCodec(
    SchemaRegistry.from_dir(Path(__file__).resolve().parents[3] / "schemas"), TOUCHPOINT_SUBJECT
)
NOW = int(time.time() * 1000)
POLICY = IngestPolicy()
