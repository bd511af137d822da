"""Typed shapes of the records (matching ``schemas/``) and the event catalogue.

Records stay plain dicts (what fastavro reads and writes, no copying); these
``TypedDict``s give them types. ``tests/unit/test_schemas.py`` checks that the
field names here match the Avro schemas exactly.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Final, TypedDict

__all__ = [
    "CATALOGUE",
    "IDENTIFIER_KINDS",
    "PAYLOAD_TYPES",
    "Channel",
    "CommerceRecord",
    "ContactCentreRecord",
    "ContextRecord",
    "GeoRecord",
    "IdentifiersRecord",
    "MergeNotice",
    "MobileRecord",
    "ResolvedEvent",
    "SocialRecord",
    "TouchpointRecord",
    "WebRecord",
    "payload_body",
]


class Channel(StrEnum):
    WEB = "web"
    MOBILE = "mobile"
    SOCIAL = "social"
    CONTACT_CENTRE = "contact_centre"


class GeoRecord(TypedDict):
    lat: float
    lon: float
    city: str | None


class IdentifiersRecord(TypedDict):
    anonymous_id: str | None
    device_id: str | None
    customer_id: str | None
    login_id: str | None
    email: str | None
    phone: str | None
    social_handle: str | None
    loyalty_id: str | None


class ContextRecord(TypedDict):
    country: str | None
    geo: GeoRecord | None
    ip: str | None
    user_agent: str | None
    locale: str | None
    timezone: str | None


class WebRecord(TypedDict):
    session_id: str | None
    url: str | None
    referrer: str | None
    page_type: str | None
    search_query: str | None
    product_id: str | None
    checkout_step: str | None
    success: bool | None
    error_code: str | None


class MobileRecord(TypedDict):
    session_id: str | None
    app_version: str | None
    os: str | None
    screen: str | None
    push_campaign: str | None
    support_topic: str | None
    success: bool | None
    error_code: str | None


class SocialRecord(TypedDict):
    platform: str
    message_id: str | None
    in_reply_to: str | None
    text: str | None
    sentiment: float | None
    is_public: bool


class ContactCentreRecord(TypedDict):
    contact_id: str | None
    medium: str | None
    queue: str | None
    agent_id: str | None
    reason: str | None
    wait_seconds: float | None
    handle_seconds: float | None
    resolved: bool | None
    transferred: bool | None
    is_complaint: bool | None
    csat: int | None
    nps: int | None


class CommerceRecord(TypedDict):
    order_id: str | None
    transaction_id: str | None
    amount: float
    currency: str
    merchant: str | None
    merchant_category: str | None
    payment_method: str | None
    status: str | None
    items: int | None


Payload = WebRecord | MobileRecord | SocialRecord | ContactCentreRecord | CommerceRecord


class TouchpointRecord(TypedDict):
    event_id: str
    channel: str
    event_type: str
    occurred_at: int  # epoch milliseconds (timestamp-millis read as the raw long)
    received_at: int
    source: str | None
    identifiers: IdentifiersRecord
    context: ContextRecord
    payload: tuple[str, Payload] | None  # (Avro record name, record)
    properties: dict[str, str]
    consent: str | None


def payload_body(record: TouchpointRecord, kind: str) -> dict[str, Any] | None:
    """The payload record if it is a ``kind`` one (a union branch name below), else None."""
    payload = record["payload"]
    if payload is None or payload[0] != kind:
        return None
    body: dict[str, Any] = payload[1]  # type: ignore[assignment]
    return body


IDENTIFIER_KINDS: Final[tuple[str, ...]] = (
    "customer_id",
    "login_id",
    "email",
    "phone",
    "loyalty_id",
    "social_handle",
    "device_id",
    "anonymous_id",
)
"""Identifier kinds, strongest first (a CRM id outranks a cookie)."""

# Avro union branch names, as fastavro reports them with return_record_name.
WEB: Final = "touchpoints.WebEvent"
MOBILE: Final = "touchpoints.MobileEvent"
SOCIAL: Final = "touchpoints.SocialEvent"
CONTACT: Final = "touchpoints.ContactCentreEvent"
COMMERCE: Final = "touchpoints.CommerceEvent"
PAYLOAD_TYPES: Final[tuple[str, ...]] = (WEB, MOBILE, SOCIAL, CONTACT, COMMERCE)

# channel -> event_type -> the payload record it must carry (None: payload optional).
_COMMERCE_TYPES = {"order_placed": COMMERCE, "payment": COMMERCE, "refund": COMMERCE}
CATALOGUE: Final[dict[str, dict[str, str | None]]] = {
    Channel.WEB: {
        "page_view": WEB,
        "search": WEB,
        "add_to_cart": WEB,
        "remove_from_cart": WEB,
        "checkout_step": WEB,
        "checkout_failed": WEB,
        "login": WEB,
        "login_failed": WEB,
        "logout": WEB,
        "signup": WEB,
        "password_reset": WEB,
        **_COMMERCE_TYPES,
    },
    Channel.MOBILE: {
        "app_open": MOBILE,
        "app_close": MOBILE,
        "screen_view": MOBILE,
        "push_open": MOBILE,
        "in_app_support": MOBILE,
        "login": MOBILE,
        "login_failed": MOBILE,
        "checkout_failed": MOBILE,
        "password_reset": MOBILE,
        **_COMMERCE_TYPES,
    },
    Channel.SOCIAL: {
        "mention": SOCIAL,
        "direct_message": SOCIAL,
        "reply": SOCIAL,
    },
    Channel.CONTACT_CENTRE: {
        "call": CONTACT,
        "chat": CONTACT,
        "email": CONTACT,
        "survey_response": CONTACT,
        "complaint": CONTACT,
        **_COMMERCE_TYPES,
    },
}


class ResolvedEvent(TypedDict):
    """A touchpoint stamped with the customer it resolved to when it was processed.

    Carried (in envelopes) on the internal ``touchpoints.resolved`` topic,
    partitioned by ``partition_for(customer_id, n)``. The customer id may later be
    absorbed into an older one: consumers follow ``MergeNotice``s.
    """

    customer_id: str
    record: TouchpointRecord


class MergeNotice(TypedDict):
    """Customer ``absorbed`` now belongs to ``survivor`` (older). Sent to both partitions."""

    survivor: str
    absorbed: str
    merged_at: int
