"""Regenerate ``corpus.jsonl``: ``python tests/data/pii/make_corpus.py``.

Seeded, so the output is the same on every run. Each line is
``{"id", "text", "pii": [{"type", "value"}], "names"}``; sentences with an empty
``pii`` list carry tricky numbers (times, dates, versions, prices, serials) and
measure false positives. Values are fictional: phone numbers use random digits,
cards and IBANs get valid checksums on random digits.
"""

from __future__ import annotations

import functools
import json
import random
import string
from collections.abc import Callable
from pathlib import Path

SEED = 20261124
OUT = Path(__file__).with_name("corpus.jsonl")

rng = random.Random(SEED)

FIRST = [
    "Anna",
    "Lukas",
    "Sophie",
    "Mehmet",
    "Zoë",
    "Jean-Luc",
    "Priya",
    "Olivia",
    "Mateo",
    "Ingrid",
    "Tomasz",
    "Aisha",
    "Liam",
    "Chiara",
    "Noah",
    "Freya",
    "Sven",
    "Yuki",
]
LAST = [
    "Schmidt",
    "Müller",
    "Dubois",
    "Y\u0131lmaz",
    "Kowalski",
    "Rossi",
    "Jensen",
    "García",
    "Novak",
    "Okafor",
    "Lindqvist",
    "Tanaka",
    "Brennan",
    "de Vries",
]
DOMAINS = [
    "example.com",
    "mail.example.org",
    "family.example.de",
    "smart-home.example.net",
    "home.example.co.uk",
    "example.fr",
    "posteo.example",
    "work.example.io",
]


def digits(n: int) -> str:
    return "".join(rng.choice(string.digits) for _ in range(n))


def nz_digits(n: int) -> str:
    return rng.choice("123456789") + digits(n - 1)


# --- values ------------------------------------------------------------------------


def email() -> str:
    first, last = rng.choice(FIRST), rng.choice(LAST)
    first = first.lower().replace("ë", "e").replace("-", "")
    last = last.lower().replace(" ", "").replace("ü", "ue").replace("\u0131", "i").replace("í", "i")
    local = rng.choice(
        [
            f"{first}.{last}",
            f"{first}{rng.randint(1970, 2005)}",
            f"{first[0]}.{last}",
            f"{first}+{rng.choice(['alerts', 'thermostat', 'home', 'iot'])}",
            f"{last}_{first}",
            f"{first}-{last}{rng.randint(1, 99)}",
        ]
    )
    return f"{local}@{rng.choice(DOMAINS)}"


def _phone_formats() -> list[Callable[[], str]]:
    return [
        lambda: f"+49 30 {nz_digits(7)}",
        lambda: f"+49 151 {nz_digits(8)}",
        lambda: f"+49 (0)89 {nz_digits(4)} {digits(4)}",
        lambda: f"+49-40-{nz_digits(7)}",
        lambda: f"+44 20 {nz_digits(4)} {digits(4)}",
        lambda: f"+44 (0)20 {nz_digits(4)} {digits(4)}",
        lambda: f"+44 7700 {nz_digits(6)}",
        lambda: f"+33 6 {digits(2)} {digits(2)} {digits(2)} {digits(2)}",
        lambda: f"+33 1 {digits(2)} {digits(2)} {digits(2)} {digits(2)}",
        lambda: f"+31 6 {nz_digits(8)}",
        lambda: f"+39 06 {nz_digits(4)} {digits(4)}",
        lambda: f"+39 347 {nz_digits(3)} {digits(4)}",
        lambda: f"+41 44 {nz_digits(3)} {digits(2)} {digits(2)}",
        lambda: f"+34 612 {digits(2)} {digits(2)} {digits(2)}",
        lambda: f"+1 ({nz_digits(3)}) {nz_digits(3)}-{digits(4)}",
        lambda: f"+1 {nz_digits(3)} {nz_digits(3)} {digits(4)}",
        lambda: f"+1.{nz_digits(3)}.{nz_digits(3)}.{digits(4)}",
        lambda: f"0049 30 {nz_digits(7)}",
        lambda: f"({nz_digits(3)}) {nz_digits(3)}-{digits(4)}",
        lambda: f"{nz_digits(3)}-{nz_digits(3)}-{digits(4)}",
        lambda: f"{nz_digits(3)}.{nz_digits(3)}.{digits(4)}",
        lambda: f"1-800-{nz_digits(3)}-{digits(4)}",
        lambda: f"030 {nz_digits(7)}",
        lambda: f"0171 {nz_digits(7)}",
        lambda: f"089/{nz_digits(8)}",
        lambda: f"(030) {nz_digits(7)}",
        lambda: f"0176-{nz_digits(8)}",
        lambda: f"06 {digits(2)} {digits(2)} {digits(2)} {digits(2)}",
        lambda: f"01.{digits(2)}.{digits(2)}.{digits(2)}.{digits(2)}",
        lambda: f"06-{nz_digits(8)}",
        lambda: f"020 {nz_digits(4)} {digits(4)}",
        lambda: f"07700 {nz_digits(6)}",
        lambda: f"06{nz_digits(8)}",
    ]


PHONE_FORMATS = _phone_formats()


def phone() -> str:
    return rng.choice(PHONE_FORMATS)()


def _luhn_complete(body: str) -> str:
    for check in string.digits:
        number = body + check
        total = 0
        for i, ch in enumerate(reversed(number)):
            d = int(ch) * (2 if i % 2 else 1)
            total += d - 9 if d > 9 else d
        if total % 10 == 0:
            return number
    raise AssertionError("unreachable")


def card() -> str:
    kind = rng.choice(["visa", "visa", "mc", "mc2", "amex", "discover", "visa13", "maestro19"])
    if kind == "amex":
        n = _luhn_complete(rng.choice(["34", "37"]) + digits(12))
        sep = rng.choice([" ", "-", ""])
        return f"{n[:4]}{sep}{n[4:10]}{sep}{n[10:]}"
    if kind == "visa13":
        return _luhn_complete("4" + digits(11))
    if kind == "maestro19":
        return _luhn_complete("6759" + digits(14))
    prefix = {"visa": "4", "mc": rng.choice(["51", "52", "53", "54", "55"]), "mc2": "2221",
              "discover": "6011"}[kind]  # fmt: skip
    n = _luhn_complete(prefix + digits(15 - len(prefix)))
    sep = rng.choice([" ", " ", "-", ""])
    return sep.join(n[i : i + 4] for i in range(0, 16, 4))


def _alnum_upper(n: int) -> str:
    return "".join(rng.choice(string.ascii_uppercase) for _ in range(n))


IBAN_BBAN: dict[str, Callable[[], str]] = {
    "DE": lambda: digits(18),
    "GB": lambda: _alnum_upper(4) + digits(14),
    "FR": lambda: digits(15) + _alnum_upper(1) + digits(7),
    "NL": lambda: _alnum_upper(4) + digits(10),
    "ES": lambda: digits(20),
    "IT": lambda: _alnum_upper(1) + digits(10) + digits(12),
    "AT": lambda: digits(16),
    "CH": lambda: digits(17),
    "BE": lambda: digits(12),
    "PL": lambda: digits(24),
    "NO": lambda: digits(11),
}


def iban(country: str | None = None) -> str:
    country = country or rng.choice(sorted(IBAN_BBAN))
    bban = IBAN_BBAN[country]()
    numeric = "".join(str(int(ch, 36)) for ch in bban + country + "00")
    compact = f"{country}{98 - int(numeric) % 97:02d}{bban}"
    if rng.random() < 0.6:
        return " ".join(compact[i : i + 4] for i in range(0, len(compact), 4))
    return compact


def ipv4() -> str:
    makers: list[Callable[[], str]] = [
        lambda: f"192.168.{rng.randint(0, 5)}.{rng.randint(2, 254)}",
        lambda: f"10.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}",
        lambda: f"172.{rng.randint(16, 31)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}",
        lambda: (
            f"{rng.randint(11, 223)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}."
            f"{rng.randint(1, 254)}"
        ),
    ]
    return rng.choice(makers)()


def _hextet() -> str:
    return format(rng.randint(1, 0xFFFF), "x")


def ipv6() -> str:
    makers: list[Callable[[], str]] = [
        lambda: "fe80::" + ":".join(_hextet() for _ in range(4)),
        lambda: "2001:db8:" + ":".join(_hextet() for _ in range(2)) + "::" + _hextet(),
        lambda: "2001:0db8:" + ":".join(format(rng.randint(0, 0xFFFF), "04x") for _ in range(6)),
        lambda: f"::ffff:192.168.{rng.randint(0, 9)}.{rng.randint(2, 254)}",
        lambda: f"fd{rng.randint(0, 255):02x}:{_hextet()}:{_hextet()}:1::{_hextet()}",
        lambda: "2a02:" + ":".join(_hextet() for _ in range(3)) + "::" + _hextet(),
    ]
    return rng.choice(makers)()


def mac() -> str:
    octets = [f"{rng.randint(0, 255):02x}" for _ in range(6)]
    style = rng.choice(["colon", "colon_upper", "dash", "cisco"])
    if style == "colon":
        return ":".join(octets)
    if style == "colon_upper":
        return ":".join(octets).upper()
    if style == "dash":
        return "-".join(octets).upper()
    h = "".join(octets)
    return f"{h[:4]}.{h[4:8]}.{h[8:]}"


def person() -> str:
    return rng.choice(FIRST) if rng.random() < 0.6 else f"{rng.choice(FIRST)} {rng.choice(LAST)}"


VALUES: dict[str, Callable[[], str]] = {
    "email": email,
    "phone": phone,
    "card": card,
    "iban": iban,
    "ip": lambda: ipv4() if rng.random() < 0.6 else ipv6(),
    "ipv4": ipv4,
    "ipv6": ipv6,
    "mac": mac,
    "name": person,
}

# --- templates ---------------------------------------------------------------------
# {type} or {type2} is a planted value; "{name}'s" plants the name.

PII_TEMPLATES = [
    "Hey, send the weekly energy report to {email} every Monday at 8:00.",
    "remind me to call {name} at {phone} tomorrow at 7:30 about the boiler",
    "Notify {email} and {email2} if the basement humidity goes above 65%.",
    "Call {name} on {phone} if the front door stays open for more than 5 minutes.",
    "What's {name}'s number again? I think it's {phone}.",
    "Set up a text alert to {phone} when the freezer goes above -12 degrees.",
    "Please pay the electricity bill of 84.20 euros from IBAN {iban} on the 3rd.",
    "The rent goes to {iban}, reference flat 4B, 1,150.00 EUR.",
    "Use my card {card} to reorder the HEPA filter, model AP-300, 49.99.",
    "Charge the car wallbox session to {card} please.",
    "I paid with {card}, expiry 09/28, why was it declined?",
    "gateway[1423]: 2026-11-24T07:15:02Z device joined from {ipv4} mac {mac} fw 2.4.1",
    "dhcp: lease {ipv4} assigned to {mac} for 86400 s",
    "The thermostat at {ipv4}:8080 stopped responding at 21:47.",
    "Why can't the camera at {ipv6} reach the NVR since firmware 4.12.0 was installed?",
    "mqtt client {mac} connected from [{ipv6}]:1883, keepalive 60",
    "Block {ipv4} on the router, it tried to log in 37 times since 03:00.",
    "ping {ipv4} returned 4 packets, 0% loss, avg 2.3 ms",
    "The smart plug with MAC {mac} shows 0.0 W since 14:05 on 12.11.2026.",
    "Add {mac} to the allowed devices list for the guest Wi-Fi.",
    "{name} will arrive at 18:45, unlock the door for her and turn the hall light to 40%.",
    "Tell {name} that dinner is ready and the oven is at 180 degrees.",
    "Did {name} leave the garage open again? It's been open since 22:10.",
    "Forward the doorbell snapshot from 16:02 to {email}.",
    "My new email is {email}, please update the alarm contact.",
    "If the smoke detector in room 2 triggers, call {phone} and email {email}.",
    "Transfer 25 euros to {name} at {iban} for the pizza on Friday.",
    "Set {name}'s alarm to 6:45 and the bedroom to 19.5 degrees.",
    "Summarize yesterday's log: {mac} at {ipv4} rebooted 3 times, last at 04:12.",
    "router: new device {mac} ({ipv6}) requested DHCP at 2026-11-23 23:59:58",
    "The plumber {name} said to call back on {phone} between 9 and 11.",
    "Send the invoice for 129.90 EUR to {email} and copy {name}.",
    "Emergency contact: {name}, {phone}, {email}.",
    "Register the heat pump warranty with serial HP-2024-0087 for {name}, {email}, {phone}.",
    "Refund of 19.99 goes back to card {card} within 5 to 7 days.",
    "Alexa, ask home assistant who is {phone}, they called at 13:20.",
    "Voicemail from {phone} at 10:03: the delivery for {name} is at the neighbour's.",
    "Please don't share {name}'s location after 23:00.",
    "Where is {name}? Last seen by the hallway sensor at 17:32.",
    "Set up direct debit for the water bill: {iban}, mandate 2026-0113.",
    "Can you check why {ipv4} is using 1.2 GB per hour on the upstream link?",
    "sensor/kitchen/temp 21.5 C from {ipv6} rssi -67 dBm",
    "Zigbee coordinator {mac} lost 12 of 48 devices at 02:17.",
    "Text {phone}: the washing machine finished after 1 h 42 min.",
    "If the water leak sensor fires, text {phone} and {phone2}.",
    "Hi it's {name}, the code for the garage is 4471, call me on {phone}.",
    "Update billing: card {card} replaced the old one ending in 4421.",
    "Can you ask {name} and {name2} whether the blinds should close at 20:00?",
    "Login failed for {email} from {ipv4} at 03:14, 5 attempts.",
    "Pair the speaker {mac} with the living room group and set volume to 35.",
    "ssh admin@{ipv4} -p 2222 keeps timing out after 30 s",
    "Order confirmation goes to {email}; paid by {card}.",
    "Salary account {iban}, please mark the 1st as payday in the calendar.",
    "Who is {name}? They rang the bell at 15:40 and left a parcel.",
    "Guest network: allow {mac} and {mac2} until 23:59 on Sunday.",
    "{name} said the Wi-Fi in room 204 drops every 10 minutes.",
    "ok google, call {name}",
    "The printer at {ipv4} says toner at 8%, order a new one for {name}.",
    "Move the 07:00 heating schedule to 06:30 and notify {email}.",
    "IPv6 prefix changed, the NAS is now at {ipv6}.",
    "call {phone}",
    "Send {name} the gate code and ask her to text {phone} when she's in.",
    "WARN net: duplicate address {ipv4} claimed by {mac} and {mac2}",
    "Invoice 2026-0412 for 312.50 EUR, pay to {iban} by 15.12.2026.",
    "Cancel the subscription on card {card} before 30.11.2026.",
    "The gym membership, 29.90 per month, is debited from {iban}.",
    "New card is {card}; old one {card2} was blocked on 02.11.2026.",
    "Split the 64.80 EUR grocery bill: {name} pays to {iban}.",
    "{name} gave me her IBAN {iban} for the 120 EUR deposit.",
    "Book the 19:30 table for 4 and hold it with card {card}.",
]

CLEAN = [
    "Turn on the kitchen lights at 07:15 and set them to 60%.",
    "Set the thermostat to 21.5 degrees until 22:30.",
    "What was the average temperature in the living room on 2026-11-24?",
    "Remind me on 05.11.2026 at 08:30 to change the filter.",
    "The fridge firmware was updated from 1.2.3 to 1.2.4 last night.",
    "Router firmware version 2.10.0.1 is available, install it at 03:00.",
    "Room 204 is at 19.8 C, room 12 is at 22.1 C.",
    "The Hue bridge model BSB002 runs software 1.65.1965000000.",
    "Buy the XR-2000 air purifier if it costs less than 1,299.00 EUR.",
    "The electricity price is 0.32 EUR per kWh between 06:00 and 22:00.",
    "Dishwasher program 3 takes 2 h 45 min at 55 degrees.",
    "Battery of the door sensor is at 12%, voltage 2.91 V.",
    "Open the blinds 30% at 7:45 am on weekdays from 2026-12-01 to 2026-12-24.",
    "The washing machine used 0.87 kWh, water 49 l, spin 1400 rpm.",
    "Humidity 65.4 %, CO2 812 ppm, PM2.5 7.1 ug/m3 at 14:05:33.",
    "uptime 1732450000 s, heap 48213 bytes, loop 0.012 ms",
    "Log timestamp 1732450000123 ms, seq 004211, rssi -71 dBm.",
    "Set the alarm for 06:45 and snooze for 9 minutes.",
    "Preheat the oven to 180 degrees for 25 minutes.",
    "The solar panels produced 14.62 kWh today, peak 4.8 kW at 12:47.",
    "Order number 4111 1111 1111 1112 shipped on 23/11/2026.",
    "Tracking code 5500 0000 0000 0005 9 arrives between 10:00 and 12:00.",
    "Serial 0123-4567 of the smoke alarm expires in 2031.",
    "Ticket 2026-11-24-0087 was closed after 3 days.",
    "Wi-Fi channel 36, bandwidth 80 MHz, tx power 20 dBm.",
    "Flight LH 2024 departs at 06:10 from gate A12.",
    "The meter reads 004512.7 m3 on 01.12.2026.",
    "Version v1.2.3.4 of the Zigbee stack fixes the pairing bug.",
    "Python 3.11.7 and paho 2.1.0 are installed on the gateway.",
    "Postcode 10115, house number 42, floor 3, apartment 12b.",
    "Set the timer for 00:45:00 and then dim the lights to 20%.",
    "Price dropped from 249.00 to 199.99, about 20% off.",
    "It was -3.5 degrees outside at 06:00, +2.1 by noon.",
    "Water heater ran 3 cycles of 0.5 h between 05:00 and 07:00.",
    "Annapolis weather tomorrow: 12 to 18 degrees, 40% rain.",
    "Play the playlist from 1999 at volume 25.",
    "Reading 12 34 56 from the gas meter, 3 digits are blurred.",
    "The garage door opened 14 times between 2026-11-01 and 2026-11-07.",
    "Kitchen light scene 4 of 12, transition 0.4 s, brightness 254.",
    "Convert 350 grams to ounces and set a 12:30 timer.",
    "Model number KD-55X85L, 55 inch, 120 Hz.",
    "Sleep score 84, 7 h 12 min, 3 wake-ups, resting HR 54.",
    "Schedule vacuum at 10:00 on 24.12. and 31.12.",
    "Hannah said the heating in 2.14 is fine now.",
    "The NAS RAID rebuild is 37.5% done, ETA 02:41:10.",
]
CLEAN_NAMES = {
    "Annapolis weather tomorrow: 12 to 18 degrees, 40% rain.": ["Anna"],
    "Hannah said the heating in 2.14 is fine now.": ["Anna", "Noah"],
    "Set the timer for 00:45:00 and then dim the lights to 20%.": ["Sophie Dubois"],
}


def fill(template: str) -> dict[str, object]:
    pii: list[dict[str, str]] = []
    names: list[str] = []
    text = template
    while "{" in text:
        start = text.index("{")
        end = text.index("}", start)
        key = text[start + 1 : end]
        if key.endswith("2") and key[:-1] in VALUES:  # {email2}: a second e-mail
            key = key[:-1]
        value = VALUES[key]()
        kind = key if key not in {"ipv4", "ipv6"} else "ip"
        pii.append({"type": kind, "value": value})
        if kind == "name":
            names.append(value)
        text = text[:start] + value + text[end + 1 :]
    # The configured household names: the planted ones plus others never mentioned.
    extra = rng.sample(FIRST, 2)
    return {"text": text, "pii": pii, "names": sorted({*names, *extra})}


def main() -> None:
    rows: list[dict[str, object]] = []
    for template in PII_TEMPLATES:
        rows.append(fill(template))
    # Every phone format at least once, in a sentence of its own.
    phone_templates = [t for t in PII_TEMPLATES if "{phone}" in t and "{phone2}" not in t]
    for make in PHONE_FORMATS:
        VALUES["phone"] = make
        rows.append(fill(rng.choice(phone_templates)))
    VALUES["phone"] = phone
    # ... and every IBAN country.
    iban_templates = [t for t in PII_TEMPLATES if "{iban}" in t]
    for country in sorted(IBAN_BBAN):
        VALUES["iban"] = functools.partial(iban, country)
        rows.append(fill(rng.choice(iban_templates)))
    VALUES["iban"] = iban
    while len(rows) < 160:
        rows.append(fill(rng.choice(PII_TEMPLATES)))
    for text in CLEAN:
        rows.append({"text": text, "pii": [], "names": CLEAN_NAMES.get(text, ["Anna", "Liam"])})
    with OUT.open("w", encoding="utf-8") as f:
        for i, row in enumerate(rows):
            f.write(json.dumps({"id": i, **row}, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
