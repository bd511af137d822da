"""Reference data of the synthetic world: countries (cities, phone number pools and formats,
names, payment methods), devices, pages, texts and property pools."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True, slots=True)
class City:
    name: str
    lat: float
    lon: float
    timezone: str
    area: str = ""  # phone area code (national significant digits) where numbers depend on it


@dataclass(frozen=True, slots=True)
class Country:
    code: str
    weight: float
    calling_code: str
    locales: tuple[str, ...]
    currency: str
    cities: tuple[City, ...]
    # Number pools, in order of use: (national significant number prefix, free digits).
    # "{a}" is replaced by the city's area code. Every number must be valid for the region.
    phone_pools: tuple[tuple[str, int], ...]
    # Templates: one '#' per digit of the national significant number.
    national: tuple[str, ...]
    international: tuple[str, ...]
    first_names: tuple[str, ...]
    last_names: tuple[str, ...]
    ip_prefixes: tuple[str, ...]
    search_terms: tuple[str, ...]
    payment_methods: tuple[str, ...]
    amount_range: tuple[float, float]
    mobile_android_share: float


COUNTRIES: Final[tuple[Country, ...]] = (
    Country(
        "GB",
        0.25,
        "44",
        ("en-GB",),
        "GBP",
        (
            City("London", 51.5074, -0.1278, "Europe/London"),
            City("Manchester", 53.4808, -2.2426, "Europe/London"),
            City("Edinburgh", 55.9533, -3.1883, "Europe/London"),
            City("Bristol", 51.4545, -2.5879, "Europe/London"),
        ),
        # 07700 900xxx is Ofcom's drama range (possible, deliberately not "valid").
        (("7700900", 3), ("7400", 6)),
        ("0#### ######", "0##########", "(0####) ######"),
        ("+44 #### ######", "+44##########", "0044 #### ######", "+44 (0)#### ######"),
        ("Oliver", "Amelia", "Harry", "Isla", "Jack", "Olivia", "George", "Emily", "Noah"),
        ("Smith", "Jones", "Taylor", "Brown", "Williams", "Wilson", "Evans", "Patel", "Walker"),
        ("81.2", "86.14", "92.40", "109.150", "2.96"),
        ("running shoes", "rain jacket", "wireless earbuds", "kettle", "school uniform"),
        ("card_visa", "card_mastercard", "paypal", "apple_pay", "klarna"),
        (12.0, 240.0),
        0.45,
    ),
    Country(
        "US",
        0.25,
        "1",
        ("en-US", "es-US"),
        "USD",
        (
            City("New York", 40.7128, -74.0060, "America/New_York", "212"),
            City("Chicago", 41.8781, -87.6298, "America/Chicago", "312"),
            City("San Francisco", 37.7749, -122.4194, "America/Los_Angeles", "415"),
            City("Austin", 30.2672, -97.7431, "America/Chicago", "512"),
            City("Washington", 38.9072, -77.0369, "America/New_York", "202"),
        ),
        # 555-0100..0199 is reserved for fiction in every area code.
        (("{a}55501", 2), ("{a}7", 6)),
        ("(###) ###-####", "###-###-####", "###.###.####", "1-###-###-####"),
        ("+1 ###-###-####", "+1##########", "+1 (###) ###-####"),
        ("James", "Mary", "Michael", "Jennifer", "Robert", "Linda", "David", "Sarah", "Daniel"),
        ("Johnson", "Garcia", "Miller", "Davis", "Rodriguez", "Martinez", "Anderson", "Moore"),
        ("73.162", "98.210", "24.5", "67.180", "174.63"),
        ("air fryer", "running shoes", "phone case", "usb-c charger", "yoga mat"),
        ("card_visa", "card_mastercard", "amex", "paypal", "apple_pay", "google_pay"),
        (15.0, 300.0),
        0.45,
    ),
    Country(
        "DE",
        0.10,
        "49",
        ("de-DE",),
        "EUR",
        (
            City("Berlin", 52.5200, 13.4050, "Europe/Berlin"),
            City("Munich", 48.1351, 11.5820, "Europe/Berlin"),
            City("Hamburg", 53.5511, 9.9937, "Europe/Berlin"),
        ),
        (("151", 8),),
        ("0### ########", "(0###) ########", "0###-########"),
        ("+49 ### ########", "+49###########", "0049 ### ########"),
        ("Lukas", "Anna", "Leon", "Lea", "Finn", "Marie", "Jonas", "Lena", "Paul"),
        ("Mueller", "Schmidt", "Schneider", "Fischer", "Weber", "Meyer", "Wagner", "Becker"),
        ("84.150", "91.64", "79.200", "93.192"),
        ("laufschuhe", "regenjacke", "kopfhoerer", "wasserkocher"),
        ("card_visa", "card_mastercard", "paypal", "sepa_debit", "klarna"),
        (12.0, 220.0),
        0.6,
    ),
    Country(
        "FR",
        0.10,
        "33",
        ("fr-FR",),
        "EUR",
        (
            City("Paris", 48.8566, 2.3522, "Europe/Paris"),
            City("Lyon", 45.7640, 4.8357, "Europe/Paris"),
            City("Marseille", 43.2965, 5.3698, "Europe/Paris"),
        ),
        (("61", 7),),
        ("0# ## ## ## ##", "0#########", "0#.##.##.##.##"),
        ("+33 # ## ## ## ##", "+33#########", "0033 # ## ## ## ##"),
        ("Louis", "Emma", "Gabriel", "Jade", "Arthur", "Louise", "Jules", "Alice", "Hugo"),
        ("Martin", "Bernard", "Dubois", "Thomas", "Robert", "Richard", "Petit", "Durand"),
        ("90.12", "86.200", "78.120", "92.184"),
        ("chaussures running", "veste pluie", "ecouteurs", "bouilloire"),
        ("card_cb", "card_visa", "paypal", "apple_pay"),
        (12.0, 220.0),
        0.55,
    ),
    Country(
        "ES",
        0.07,
        "34",
        ("es-ES", "ca-ES"),
        "EUR",
        (
            City("Madrid", 40.4168, -3.7038, "Europe/Madrid"),
            City("Barcelona", 41.3874, 2.1686, "Europe/Madrid"),
            City("Valencia", 39.4699, -0.3763, "Europe/Madrid"),
        ),
        (("6", 8),),
        ("### ## ## ##", "#########", "### ### ###"),
        ("+34 ### ## ## ##", "+34#########", "0034 #########"),
        ("Hugo", "Lucia", "Mateo", "Sofia", "Martin", "Martina", "Pablo", "Maria", "Paula"),
        ("Garcia", "Rodriguez", "Gonzalez", "Fernandez", "Lopez", "Sanchez", "Perez", "Gomez"),
        ("83.40", "88.12", "79.150", "95.16"),
        ("zapatillas running", "chaqueta lluvia", "auriculares"),
        ("card_visa", "card_mastercard", "paypal", "bizum"),
        (12.0, 200.0),
        0.75,
    ),
    Country(
        "BR",
        0.07,
        "55",
        ("pt-BR",),
        "BRL",
        (
            City("Sao Paulo", -23.5505, -46.6333, "America/Sao_Paulo", "11"),
            City("Rio de Janeiro", -22.9068, -43.1729, "America/Sao_Paulo", "21"),
        ),
        (("{a}9", 8),),
        ("(##) #####-####", "## #####-####", "(##) ##### ####"),
        ("+55 ## #####-####", "+55###########", "0055 ## ##### ####"),
        ("Miguel", "Helena", "Arthur", "Alice", "Heitor", "Laura", "Bernardo", "Julia", "Davi"),
        ("Silva", "Santos", "Oliveira", "Souza", "Rodrigues", "Ferreira", "Alves", "Pereira"),
        ("177.30", "189.60", "201.20", "179.104"),
        ("tenis corrida", "fone bluetooth", "capa celular", "air fryer"),
        ("pix", "card_visa", "card_mastercard", "boleto"),
        (60.0, 1200.0),
        0.85,
    ),
    Country(
        "IN",
        0.08,
        "91",
        ("en-IN", "hi-IN"),
        "INR",
        (
            City("Mumbai", 19.0760, 72.8777, "Asia/Kolkata"),
            City("Bengaluru", 12.9716, 77.5946, "Asia/Kolkata"),
            City("Delhi", 28.7041, 77.1025, "Asia/Kolkata"),
        ),
        (("98", 8),),
        ("0##### #####", "##########", "0##########"),
        ("+91 ##### #####", "+91##########", "0091 ##########"),
        ("Aarav", "Ananya", "Vihaan", "Diya", "Arjun", "Saanvi", "Reyansh", "Priya", "Ishaan"),
        ("Sharma", "Verma", "Gupta", "Singh", "Kumar", "Patel", "Reddy", "Iyer", "Nair"),
        ("49.36", "106.200", "117.200", "223.181"),
        ("running shoes", "kurta", "earphones", "pressure cooker"),
        ("upi", "card_rupay", "card_visa", "netbanking", "cod"),
        (499.0, 15000.0),
        0.9,
    ),
    Country(
        "AU",
        0.05,
        "61",
        ("en-AU",),
        "AUD",
        (
            City("Sydney", -33.8688, 151.2093, "Australia/Sydney"),
            City("Melbourne", -37.8136, 144.9631, "Australia/Melbourne"),
            City("Brisbane", -27.4698, 153.0251, "Australia/Brisbane"),
        ),
        (("491570", 3), ("412", 6)),
        ("0### ### ###", "0#########", "0###-###-###"),
        ("+61 ### ### ###", "+61#########", "0061 ### ### ###"),
        ("Oliver", "Charlotte", "Jack", "Olivia", "William", "Amelia", "Noah", "Isla", "Mia"),
        ("Smith", "Jones", "Williams", "Brown", "Wilson", "Taylor", "Nguyen", "Martin"),
        ("101.160", "110.140", "120.150", "1.128"),
        ("running shoes", "swimwear", "sunscreen", "esky"),
        ("card_visa", "card_mastercard", "afterpay", "paypal", "apple_pay"),
        (20.0, 380.0),
        0.45,
    ),
    Country(
        "JP",
        0.03,
        "81",
        ("ja-JP",),
        "JPY",
        (
            City("Tokyo", 35.6762, 139.6503, "Asia/Tokyo"),
            City("Osaka", 34.6937, 135.5023, "Asia/Tokyo"),
        ),
        (("901", 7),),
        ("0##-####-####", "0##########", "0## #### ####"),
        ("+81 ##-####-####", "+81##########", "0081 ## #### ####"),
        ("Haruto", "Yui", "Sota", "Hina", "Yuto", "Sakura", "Riku", "Yuna", "Ren"),
        ("Sato", "Suzuki", "Takahashi", "Tanaka", "Watanabe", "Ito", "Yamamoto", "Nakamura"),
        ("126.20", "153.140", "180.12", "60.70"),
        ("ランニングシューズ", "イヤホン", "傘", "電気ケトル"),
        ("card_jcb", "card_visa", "paypay", "konbini"),
        (1500.0, 40000.0),
        0.3,
    ),
)
COUNTRY_WEIGHTS: Final = tuple(c.weight for c in COUNTRIES)

EMAIL_DOMAINS: Final = (
    "example.com",
    "example.net",
    "example.org",
    "mail.example",
    "post.example",
)
SOCIAL_PLATFORMS: Final = ("x", "instagram", "facebook", "tiktok")
SOCIAL_PLATFORM_WEIGHTS: Final = (0.35, 0.35, 0.2, 0.1)
BRAND: Final = "northwind"
SHOP: Final = "https://shop.example.com"

DESKTOP_UAS: Final = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.4 Safari/605.1.15",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:125.0) Gecko/20100101 Firefox/125.0",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36 Edg/124.0.2478.80",
)
MOBILE_WEB_UAS: Final = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (Linux; Android 13; SM-S911B) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Mobile Safari/537.36",
)
IOS_DEVICES: Final = ("iPhone15,3", "iPhone14,5", "iPhone16,1", "iPad13,18")
IOS_VERSIONS: Final = ("17.4.1", "17.5", "16.7.8")
ANDROID_DEVICES: Final = ("Pixel 8", "SM-S911B", "SM-A546B", "moto g54 5G", "Redmi Note 13")
ANDROID_VERSIONS: Final = ("14", "13", "12")
APP_VERSIONS: Final = ("5.13.0", "5.12.1", "5.12.0", "5.11.3")
APP_VERSION_WEIGHTS: Final = (0.45, 0.3, 0.15, 0.1)

CATEGORIES_SHOP: Final = ("shoes", "outdoor", "electronics", "home", "kids", "sport", "beauty")
WEB_REFERRERS: Final = (
    None,
    "https://www.google.com/",
    "https://www.bing.com/",
    "https://l.instagram.com/",
    "https://newsletter.example.com/",
)
PUSH_CAMPAIGNS: Final = ("spring_sale", "cart_reminder", "back_in_stock", "order_shipped", "vip")
SUPPORT_TOPICS: Final = ("order_status", "returns", "payment_issue", "account_access")
SCREENS: Final = ("home", "category", "product", "search", "offers", "orders", "account")
WEB_CHECKOUT_ERRORS: Final = ("PSP_TIMEOUT", "ADDRESS_INVALID", "HTTP_502", "3DS_FAILED")
MOBILE_CHECKOUT_ERRORS: Final = ("PSP_TIMEOUT", "NETWORK_ERROR", "3DS_FAILED", "APP_CRASH")
MERCHANT_CATEGORIES: Final = ("5651", "5732", "5941", "5712", "5977")
CC_REASONS: Final = (
    "order_status",
    "delivery_delay",
    "return_request",
    "billing",
    "account_access",
    "product_question",
)
CC_REASON_WEIGHTS: Final = (0.3, 0.2, 0.2, 0.12, 0.1, 0.08)
CC_QUEUES: Final = {
    "order_status": "orders",
    "delivery_delay": "orders",
    "return_request": "returns",
    "billing": "payments",
    "account_access": "accounts",
    "product_question": "general",
    "checkout_failure": "payments",
    "payment_declined": "payments",
}

POSITIVE_TEXTS: Final = (
    "Love my new order from @{brand}, arrived a day early!",
    "Great service from @{brand} today, thank you",
    "@{brand} the new app update is really smooth",
    "Best trainers I've had, cheers @{brand}",
)
NEUTRAL_TEXTS: Final = (
    "@{brand} do you deliver to {city}?",
    "@{brand} any discount codes this week?",
    "@{brand} when is the spring sale starting?",
    "Is the {city} store open on Sunday @{brand}?",
)
NEGATIVE_TEXTS: Final = (
    "@{brand} checkout keeps failing, third time today",
    "@{brand} still waiting for my refund, two weeks now",
    "@{brand} my parcel says delivered but nothing here",
    "@{brand} your payment page just took my money and errored",
)
DM_TEXTS: Final = (
    "Hi, can you look at my order? My account email is {email}",
    "Hello, payment failed but I was charged. Email on the account: {email}",
    "Could someone call me back about my return please",
    "Hi, I can't log in to my account, what should I do?",
)

WEB_PROPS: Final = (
    ("utm_source", ("google", "newsletter", "instagram", "direct", "affiliate")),
    ("utm_campaign", ("spring_sale", "always_on", "brand", "retargeting")),
    ("ab_test", ("checkout_v2:A", "checkout_v2:B", "pdp_gallery:control")),
    ("page_load_ms", ("212", "388", "540", "910", "1620")),
    ("viewport", ("1440x900", "1920x1080", "390x844", "412x915")),
)
APP_PROPS: Final = (
    ("network", ("wifi", "4g", "5g", "3g")),
    ("app_build", ("51300", "51210", "51200")),
    ("battery_saver", ("true", "false")),
    ("dark_mode", ("true", "false")),
)
CC_PROPS: Final = (
    ("ivr_path", ("1>2", "1>3>1", "2", "3>1")),
    ("language", ("en", "de", "fr", "es", "pt", "hi", "ja")),
    ("site", ("glasgow", "manila", "lisbon", "austin")),
    ("callback", ("true", "false")),
)
SOCIAL_PROPS: Final = (
    ("followers", ("12", "240", "1830", "15200")),
    ("lang", ("en", "de", "fr", "es", "pt", "ja")),
    ("verified", ("false", "true")),
)
PAY_PROPS: Final = (
    ("psp", ("adyen", "stripe", "worldpay")),
    ("three_ds", ("frictionless", "challenge", "exempt")),
    ("card_country", ("GB", "US", "DE", "FR", "ES", "BR", "IN", "AU", "JP")),
)

UUID_CLEAR: Final = ~((0xF000 << 64) | (0xC000 << 48)) & ((1 << 128) - 1)
UUID_SET: Final = (0x4000 << 64) | (0x8000 << 48)
MINUTE: Final = 60_000


def fill(template: str, digits: str) -> str:
    """Put ``digits`` into the ``#`` of ``template``: ``fill("0## ###", "12345") == "012 345"``."""
    return template.replace("#", "{}").format(*digits)
