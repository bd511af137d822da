"""People: names, email addresses, phone numbers, browsers and apps."""

from __future__ import annotations

from streams.sim.journeys.base import JourneyBase
from streams.sim.journeys.model import App, Browser, Person
from streams.sim.journeys.world import (
    ANDROID_DEVICES,
    ANDROID_VERSIONS,
    APP_VERSION_WEIGHTS,
    APP_VERSIONS,
    COUNTRIES,
    COUNTRY_WEIGHTS,
    DESKTOP_UAS,
    EMAIL_DOMAINS,
    IOS_DEVICES,
    IOS_VERSIONS,
    MOBILE_WEB_UAS,
    SOCIAL_PLATFORM_WEIGHTS,
    SOCIAL_PLATFORMS,
    City,
    Country,
    fill,
)
from streams.wire.model import GeoRecord


class People(JourneyBase):
    # ---------------------------------------------------------------- people

    def person(self, index: int, home: tuple[Country, City] | None = None) -> Person:
        """A new person; ``home``: where they live (a household's members live together)."""
        rnd = self.rnd
        country = self.weighted(COUNTRIES, COUNTRY_WEIGHTS)
        city = self.pick(country.cities)
        if home is not None:
            country, city = home
        first = self.pick(country.first_names)
        last = self.pick(country.last_names)
        n = f"{self.suffixes[index]:0{self.suffix_width}d}"
        email, email_forms = self.email_address(first, last, n)
        login_id = self.pick((f"{first}{last}{n}", f"{first.lower()}{n}", f"{last}_{first}{n}"))
        e164, national, international, typed = self.phones(country, city)
        handle: str | None = None
        if rnd() < 0.45:
            handle = self.pick((f"{first}{last[0]}_{n}", f"{first.lower()}.{last.lower()}{n}"))
        platform = self.weighted(SOCIAL_PLATFORMS, SOCIAL_PLATFORM_WEIGHTS)
        r = rnd()
        consent = (
            "granted" if r < 0.88 else "denied" if r < 0.93 else "unknown" if r < 0.98 else None
        )
        browsers = [self.browser(country, city, mobile=False)]
        if rnd() < 0.35:
            browsers.append(self.browser(country, city, mobile=True))
        apps: list[App] = []
        if rnd() < 0.6:
            apps.append(self.app(country))
            if rnd() < 0.08:
                apps.append(self.app(country))  # a tablet as well
        affinity = (
            1.0 if rnd() < 0.9 else 0.3,
            (1.6 if rnd() < 0.7 else 0.8) if apps else 0.0,
            1.0,
            2.5 if handle else 0.0,
            1.0,
        )
        registered = rnd() < 0.85
        if registered:
            # Returning customers: apps keep you logged in, some browsers remember you.
            for a in apps:
                a.logged_in = rnd() < 0.5
            for b in browsers:
                b.linked = rnd() < 0.25
        return Person(
            index=index,
            country=country,
            city=city,
            locale=self.pick(country.locales),
            customer_id=f"CRM-{self.customer_ids[index]:0{self.customer_width}d}",
            registered=registered,
            login_id=login_id,
            email=email,
            email_forms=email_forms,
            phone_e164=e164,
            phone_typed=typed,
            phone_national=national,
            phone_international=international,
            handle=handle,
            platform=platform,
            loyalty_id=f"LY{self.loyalty_ids[index]}" if rnd() < 0.55 else None,
            consent=consent,
            payment_method=self.pick(country.payment_methods),
            browsers=browsers,
            apps=apps,
            affinity=affinity,
        )

    def email_address(self, first: str, last: str, n: str) -> tuple[str, tuple[str, ...]]:
        """An email address (canonical spelling) and the odd spellings of it that occur."""
        style = self.randint(0, 3)
        if style == 0:
            local = f"{first}.{last}{n}"
        elif style == 1:
            local = f"{first[0]}{last}{n}"
        elif style == 2:
            local = f"{first}_{last[:3]}{n}"
        else:
            local = f"{last}.{first}{n}"
        domain = self.pick(EMAIL_DOMAINS)
        email = f"{local.lower()}@{domain}"
        email_forms = (
            f"{local}@{domain.capitalize()}",
            f"  {local}@{domain.upper()} ",
            f"{email.upper()}",
            f"{email} ",
        )
        return email, email_forms

    def phones(self, country: Country, city: City) -> tuple[str, str, str, str]:
        """A new number: E.164, national and international spellings, and as typed."""
        nsn = self.phone_number(country, city)
        e164 = f"+{country.calling_code}{nsn}"
        national = fill(self.pick(country.national), nsn)
        international = fill(self.pick(country.international), nsn)
        typed = self.pick((e164, national, international, national, international))
        return e164, national, international, typed

    def centre_phone(self, p: Person) -> str:
        """The contact centre's own number in the caller's country (E.164)."""
        number = self.centre_phones.get(p.country.code)
        if number is None:
            nsn = self.phone_number(p.country, p.country.cities[0])
            number = self.centre_phones[p.country.code] = f"+{p.country.calling_code}{nsn}"
        return number

    def phone_number(self, country: Country, city: City) -> str:
        """A unique national significant number from the country's pools."""
        pool_key = (country.code, city.area)
        k = self.phone_next.get(pool_key, 0)
        self.phone_next[pool_key] = k + 1
        start = self.phone_start[country.code]
        for prefix, free in country.phone_pools:
            size = 10**free
            if k < size:
                # An affine permutation of the pool: unique, but not sequential.
                n = (start + k * 7919) % size
                return f"{prefix.replace('{a}', city.area)}{n:0{free}d}"
            k -= size
        raise ValueError(f"phone number pools of {country.code} exhausted")

    def browser(self, country: Country, city: City, *, mobile: bool) -> Browser:
        ua = self.pick(MOBILE_WEB_UAS if mobile else DESKTOP_UAS)
        cookies = [self.uuid()]
        if self.rnd() < 0.3:
            cookies.append(self.uuid())  # cleared cookies / private window later on
        geo: GeoRecord = {
            "lat": round(city.lat + (self.rnd() - 0.5) * 0.08, 4),
            "lon": round(city.lon + (self.rnd() - 0.5) * 0.12, 4),
            "city": city.name,
        }
        return Browser(ua, mobile, self.ip(country), geo, cookies)

    def app(self, country: Country) -> App:
        version = self.weighted(APP_VERSIONS, APP_VERSION_WEIGHTS)
        if self.rnd() < country.mobile_android_share:
            device = self.pick(ANDROID_DEVICES)
            os_version = self.pick(ANDROID_VERSIONS)
            ua = f"NorthwindApp/{version} (Linux; Android {os_version}; {device})"
            return App("android", "android-sdk", self.uuid(), ua, version)
        device = self.pick(IOS_DEVICES)
        ua = f"NorthwindApp/{version} ({device}; iOS {self.pick(IOS_VERSIONS)})"
        return App("ios", "ios-sdk", self.uuid().upper(), ua, version)
