"""English text normalisation: numbers, ordinals, money, percentages, dates, times, units and common
abbreviations become words; punctuation becomes the table's punctuation (, . ! ? … -).

Possessives and contractions ("Giles's", "don't") are kept as written; the G2P reads them.
"""

from __future__ import annotations

import re

_ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
         "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
_TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
_SCALES = [(10**12, "trillion"), (10**9, "billion"), (10**6, "million"), (1000, "thousand"), (100, "hundred")]
_ORDINAL_WORDS = {"one": "first", "two": "second", "three": "third", "five": "fifth", "eight": "eighth",
                  "nine": "ninth", "twelve": "twelfth"}
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]
_MONTH_ABBR = {m[:3].lower(): m for m in MONTHS} | {"sept": "September"}


def int_to_words(n: int) -> str:
    """123 -> "one hundred twenty-three" (no "and"), -5 -> "minus five"."""
    if n < 0:
        return "minus " + int_to_words(-n)
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("-" + _ONES[n % 10] if n % 10 else "")
    for value, name in _SCALES:
        if n >= value:
            head, rest = divmod(n, value)
            return int_to_words(head) + " " + name + (" " + int_to_words(rest) if rest else "")
    raise AssertionError(n)


def ordinal_words(n: int) -> str:
    """21 -> "twenty-first", 100 -> "one hundredth"."""
    words = int_to_words(n)
    m = re.match(r"^(.*?)([a-z]+)$", words)
    head, last = m.group(1), m.group(2)
    if last in _ORDINAL_WORDS:
        last = _ORDINAL_WORDS[last]
    elif last.endswith("y"):
        last = last[:-1] + "ieth"
    else:
        last += "th"
    return head + last


def year_words(n: int) -> str:
    """1999 -> "nineteen ninety-nine", 2005 -> "two thousand five", 1900 -> "nineteen hundred"."""
    if 2000 <= n < 2010:
        return int_to_words(n)
    if n % 1000 == 0:
        return int_to_words(n)
    head, tail = divmod(n, 100)
    if tail == 0:
        return int_to_words(head) + " hundred"
    if tail < 10:
        return int_to_words(head) + " oh " + _ONES[tail]
    return int_to_words(head) + " " + int_to_words(tail)


def number_words(text: str) -> str:
    """"3.14" -> "three point one four", "1,000" -> "one thousand", "-2" -> "minus two"."""
    text = text.replace(",", "")
    sign = ""
    if text.startswith(("-", "−")):
        sign, text = "minus ", text[1:]
    if len(text.split(".")[0]) > 15:  # too long to be a quantity: read the digits
        return sign + " ".join("point" if d == "." else _ONES[int(d)] for d in text)
    if "." in text:
        whole, frac = text.split(".", 1)
        words = int_to_words(int(whole or "0")) + " point " + " ".join(_ONES[int(d)] for d in frac)
        return sign + words
    return sign + int_to_words(int(text))


_ABBREVIATIONS = [
    (r"\bMrs\.", "missus"), (r"\bMr\.", "mister"), (r"\bMs\.", "miz"), (r"\bDr\.", "doctor"),
    (r"\bProf\.", "professor"), (r"\bSt\.(?=\s+[A-Z])", "saint"), (r"\bSt\.", "street"), (r"\bJr\.", "junior"),
    (r"\bSr\.", "senior"), (r"\bCapt\.", "captain"), (r"\bLt\.", "lieutenant"), (r"\bCol\.", "colonel"),
    (r"\bGen\.", "general"), (r"\bSgt\.", "sergeant"), (r"\bRev\.", "reverend"), (r"\bGov\.", "governor"),
    (r"\bSen\.", "senator"), (r"\bRep\.", "representative"), (r"\bMt\.", "mount"), (r"\bAve\.", "avenue"),
    (r"\bRd\.", "road"), (r"\bBlvd\.", "boulevard"), (r"\bCo\.", "company"), (r"\bCorp\.", "corporation"),
    (r"\bInc\.", "incorporated"), (r"\bLtd\.", "limited"), (r"\bDept\.", "department"), (r"\bvs\.?(?=\s)", "versus"),
    (r"\betc\.", "et cetera"), (r"\be\.g\.", "for example"), (r"\bi\.e\.", "that is"), (r"\bapprox\.", "approximately"),
    (r"\bNo\.(?=\s*\d)", "number"), (r"\bno\.(?=\s*\d)", "number"), (r"\bFig\.", "figure"), (r"\bfig\.", "figure"),
    (r"\bU\.S\.A\.", "U S A"), (r"\bU\.S\.", "U S"), (r"\bU\.K\.", "U K"), (r"\bAt\.", "at"),
]
for _abbr, _full in list(_MONTH_ABBR.items()):
    _ABBREVIATIONS.append((rf"\b{_abbr.capitalize()}\.(?=\s*\d)", _full))

_UNITS = {
    "km/h": ("kilometer per hour", "kilometers per hour"), "mph": ("mile per hour", "miles per hour"),
    "km": ("kilometer", "kilometers"), "kg": ("kilogram", "kilograms"), "cm": ("centimeter", "centimeters"),
    "mm": ("millimeter", "millimeters"), "mg": ("milligram", "milligrams"), "ml": ("milliliter", "milliliters"),
    "kHz": ("kilohertz", "kilohertz"), "MHz": ("megahertz", "megahertz"), "GHz": ("gigahertz", "gigahertz"),
    "Hz": ("hertz", "hertz"), "lbs": ("pound", "pounds"), "lb": ("pound", "pounds"), "oz": ("ounce", "ounces"),
    "ft": ("foot", "feet"), "°C": ("degree Celsius", "degrees Celsius"), "℃": ("degree Celsius", "degrees Celsius"),
    "°F": ("degree Fahrenheit", "degrees Fahrenheit"), "°": ("degree", "degrees"), "m": ("meter", "meters"),
    "g": ("gram", "grams"), "kW": ("kilowatt", "kilowatts"), "s": ("second", "seconds"),
}
_UNIT_RE = "|".join(re.escape(u) for u in sorted(_UNITS, key=len, reverse=True))
_CURRENCY = {"$": ("dollar", "dollars", "cent", "cents"), "€": ("euro", "euros", "cent", "cents"),
             "£": ("pound", "pounds", "penny", "pence"), "¥": ("yuan", "yuan", "", ""),
             "￥": ("yuan", "yuan", "", "")}
_SCALE_WORDS = {"k": "thousand", "K": "thousand", "m": "million", "M": "million", "mn": "million",
                "b": "billion", "B": "billion", "bn": "billion", "thousand": "thousand", "million": "million",
                "billion": "billion", "trillion": "trillion"}


def _money(m: re.Match) -> str:
    unit, amount, scale = m.group(1), m.group(2).replace(",", ""), m.group(3)
    one, many, cent_one, cent_many = _CURRENCY[unit]
    if scale:
        return f"{number_words(amount)} {_SCALE_WORDS[scale]} {many}"
    whole, _, frac = amount.partition(".")
    dollars = int(whole or "0")
    cents = int((frac + "00")[:2]) if frac else 0
    parts = []
    if dollars or not cents:
        parts.append(f"{int_to_words(dollars)} {one if dollars == 1 else many}")
    if cents:
        if cent_one:
            parts.append(f"{int_to_words(cents)} {cent_one if cents == 1 else cent_many}")
        else:
            return f"{number_words(amount)} {many}"
    return " and ".join(parts)


def _time(m: re.Match) -> str:
    hour, minute, suffix = int(m.group(1)), int(m.group(2)), m.group(3)
    words = int_to_words(hour)
    if minute == 0:
        words += "" if suffix else " o'clock"
    elif minute < 10:
        words += " oh " + _ONES[minute]
    else:
        words += " " + int_to_words(minute)
    if suffix:
        words += " " + _ampm(m, suffix)
    return words


def _ampm(m: re.Match, suffix: str) -> str:
    """"p.m." -> "P M"; a final dot that also ends the sentence is kept."""
    words = " ".join(suffix.replace(".", "").upper())
    rest = m.string[m.end():]
    if suffix.endswith(".") and (not rest.strip() or re.match(r"\s+[A-Z\"'“]", rest)):
        words += "."
    return words


def _date_numeric(year: str, month: str, day: str) -> str:
    mo, d = int(month), int(day)
    if not (1 <= mo <= 12 and 1 <= d <= 31):
        return f"{year} {month} {day}"
    return f"{MONTHS[mo - 1]} {ordinal_words(d)}, {year_words(int(year))}"


def _ordinal(m: re.Match) -> str:
    return ordinal_words(int(m.group(1).replace(",", "")))


def _fraction(m: re.Match) -> str:
    num, den = int(m.group(1)), int(m.group(2))
    if den == 2:
        return int_to_words(num) + (" half" if num == 1 else " halves")
    if den == 4:
        return int_to_words(num) + (" quarter" if num == 1 else " quarters")
    if den == 0 or den > 100:
        return f"{int_to_words(num)} over {int_to_words(den)}"
    return int_to_words(num) + " " + ordinal_words(den) + ("s" if num != 1 else "")


def _unit(m: re.Match) -> str:
    amount, unit = m.group(1), m.group(2)
    one, many = _UNITS[unit]
    return f"{number_words(amount)} {one if amount in ('1', '-1') else many}"


def _plain_number(m: re.Match) -> str:
    text = m.group(0)
    digits = text.replace(",", "")
    if "," not in text and "." not in text and len(digits) == 4 and 1100 <= int(digits) <= 2099:
        return year_words(int(digits))
    if "." not in text and len(digits) > 1 and digits.startswith("0"):
        return " ".join(_ONES[int(d)] for d in digits)  # 007, zip codes
    return number_words(text)


_PUNCT_MAP = {"，": ",", "、": ",", "；": ",", "：": ",", ";": ",", ":": ",", "。": ".", "！": "!", "？": "?",
              "…": "…", "~": "…", "～": "…", "—": "-", "–": "-", "―": "-", "\n": ".", "·": ","}


def normalize_en(text: str) -> str:
    """Normalise one English segment (already NFKC-folded by the caller)."""
    text = text.replace("’", "'").replace("‘", "'").replace("`", "'")
    for pattern, full in _ABBREVIATIONS:  # an abbreviation's dot that also ends the text is kept
        text = re.sub(pattern, lambda m, full=full: full + ("." if m.group(0).endswith(".")
                                                            and not m.string[m.end():].strip() else ""), text)
    text = re.sub(r"(?<![\w.])\.(?=\d)", "0.", text)  # .5 -> 0.5
    # dates
    text = re.sub(r"\b(\d{4})[-/.](\d{1,2})[-/.](\d{1,2})\b", lambda m: _date_numeric(*m.groups()), text)
    text = re.sub(r"\b(\d{1,2})/(\d{1,2})/(\d{4})\b", lambda m: _date_numeric(m.group(3), m.group(1), m.group(2)),
                  text)
    month_re = "|".join(MONTHS)
    text = re.sub(rf"\b({month_re})\s+(\d{{1,2}})(?:st|nd|rd|th)?\b(?!:)",
                  lambda m: f"{m.group(1)} {ordinal_words(int(m.group(2)))}", text)
    text = re.sub(rf"\b(\d{{1,2}})(?:st|nd|rd|th)?\s+(?:of\s+)?({month_re})\b",
                  lambda m: f"the {ordinal_words(int(m.group(1)))} of {m.group(2)}", text)
    # times
    text = re.sub(r"\b(\d{1,2}):(\d{2})(?::\d{2})?(?:\s*([AaPp]\.?[Mm]\.?)(?![A-Za-z]))?", _time, text)
    text = re.sub(r"\b(\d{1,2})\s*([AaPp]\.?[Mm]\.?)(?![A-Za-z])",
                  lambda m: int_to_words(int(m.group(1))) + " " + _ampm(m, m.group(2)),
                  text)
    text = re.sub(r"(?<![A-Za-z])(?:[A-Za-z]\.){2,}(?![A-Za-z])",
                  lambda m: " " + " ".join(m.group(0).replace(".", "").upper()) + " ", text)
    # money, percentages, ordinals, fractions, units
    text = re.sub(r"\b(?:US|HK|AU|CA|NZ|A|C)\$", "$", text)
    text = re.sub(r"([$€£¥￥])\s?(\d[\d,]*(?:\.\d+)?)(?:\s?(thousand|million|billion|trillion|bn|mn|[kKmMbB])\b)?",
                  _money, text)
    text = re.sub(r"(-?\d[\d,]*(?:\.\d+)?)\s?%", lambda m: number_words(m.group(1)) + " percent", text)
    text = re.sub(r"\b(\d[\d,]*)(?:st|nd|rd|th)\b", _ordinal, text)
    text = re.sub(r"(?<![\d/])(\d+)/(\d+)(?![\d/])", _fraction, text)
    text = re.sub(rf"(-?\d[\d,]*(?:\.\d+)?)\s?({_UNIT_RE})(?![A-Za-z])", _unit, text)
    text = re.sub(r"(?<![\d-])\d{3}-\d{3,4}(?:-\d{4})?(?![\d-])",  # phone numbers: digit by digit
                  lambda m: ", ".join(" ".join(_ONES[int(d)] for d in g) for g in m.group(0).split("-")), text)
    text = re.sub(r"(\d)\s?-\s?(\d)", r"\1 to \2", text)
    text = re.sub(r"(?<![\w])-(?=\d)", "minus ", text)
    text = re.sub(r"(?<=[A-Za-z])(?=\d)|(?<=\d)(?=[A-Za-z])", " ", text)  # H2O, GPT4, abc123
    text = re.sub(r"\d+(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?", _plain_number, text)
    # letters glued to digits were split above; symbols
    text = text.replace("&", " and ").replace("@", " at ").replace("+", " plus ").replace("=", " equals ")
    text = text.replace("%", " percent ").replace("#", " number ")
    text = text.replace("...", "…")
    for src, dst in _PUNCT_MAP.items():
        text = text.replace(src, dst)
    text = re.sub(r"(?<=[A-Za-z])-(?=[A-Za-z])", " ", text)  # well-known -> well known
    text = re.sub(r"\s+-+\s+|(?<=\s)-+|-+(?=\s)", " - ", text)
    # drop what cannot be read: quotes, brackets, stray symbols
    text = re.sub(r"[^A-Za-z' ,.!?…\-]", " ", text)
    text = re.sub(r"(?<![A-Za-z])'|'(?![A-Za-z])(?<!s')", " ", text)
    text = re.sub(r"\s*([,.!?…\-])\s*", r"\1 ", text)
    text = re.sub(r"([,.!?…\-])(?:\s*[,.!?…\-])+", r"\1", text)
    return re.sub(r"\s+", " ", text).strip()
