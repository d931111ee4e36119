"""Chinese text normalisation: numbers, dates, times, money, percentages and units become characters,
punctuation becomes the table's punctuation, everything else that cannot be read is dropped.

The output contains only CJK characters, the punctuation symbols in `symbols.PUNCTUATION` and the two
pause markers "￥" (SP2) and "^" (SP3); one word2ph entry per output character.
"""

from __future__ import annotations

import re

DIGITS = "零一二三四五六七八九"
_SMALL_UNITS = ["", "十", "百", "千"]
_BIG_UNITS = ["", "万", "亿", "万亿"]

# measure words after which a lone 2 reads 两
_LIANG_MEASURES = set("个只本次位名件条张把台辆天年周岁斤米层点块元种双对份门所间座首部句篇项支枝头匹家杯瓶碗根顿遍场")

ZH_UNITS = {
    "km/h": "千米每小时", "km²": "平方千米", "m²": "平方米", "m³": "立方米", "cm²": "平方厘米",
    "km": "千米", "kg": "千克", "cm": "厘米", "mm": "毫米", "ml": "毫升", "mL": "毫升", "mg": "毫克",
    "kW": "千瓦", "kw": "千瓦", "kHz": "千赫兹", "MHz": "兆赫兹", "GHz": "吉赫兹", "Hz": "赫兹",
    "°C": "摄氏度", "℃": "摄氏度", "°F": "华氏度", "℉": "华氏度", "°": "度",
    "m": "米", "g": "克", "t": "吨", "L": "升", "h": "小时", "s": "秒", "min": "分钟",
}
# longest first so "km" wins over "m"
_UNIT_PATTERN = "|".join(re.escape(u) for u in sorted(ZH_UNITS, key=len, reverse=True))

_PUNCT_MAP = {
    "，": ",", "、": ",", "；": ",", "：": ",", ",": ",", ";": ",", ":": ",", "·": ",", "\n": ".",
    "。": ".", ".": ".", "！": "!", "!": "!", "？": "?", "?": "?", "…": "…", "~": "…", "～": "…",
    "—": "-", "–": "-", "-": "-", "―": "-",
}

_CJK = r"\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff〇"


def int_to_zh(number: int | str, *, liang: bool = False) -> str:
    """Cardinal reading: 2024 -> 二千零二十四 (两千零二十四 with liang=True), 10 -> 十, 105 -> 一百零五."""
    digits = str(int(number))
    if digits == "0":
        return "零"
    groups = []
    while digits:
        groups.insert(0, digits[-4:])
        digits = digits[:-4]
    out = ""
    pending_zero = False
    for gi, group in enumerate(groups):
        big = _BIG_UNITS[len(groups) - 1 - gi] if len(groups) - 1 - gi < len(_BIG_UNITS) else ""
        value = int(group)
        if value == 0:
            pending_zero = bool(out)
            continue
        text = ""
        group = group.rjust(4, "0")
        zero = pending_zero or (bool(out) and group[0] == "0")
        for i, d in enumerate(group):
            if d == "0":
                if text:
                    zero = True
                continue
            if zero and (text or out):
                text += "零"
            zero = False
            text += DIGITS[int(d)] + _SMALL_UNITS[3 - i]
        out += text + big
        pending_zero = False
    if out.startswith("一十"):
        out = out[1:]
    if liang and out.startswith("二") and len(out) > 1 and out[1] in "千万亿":
        out = "两" + out[1:]
    return out


def digits_to_zh(digits: str) -> str:
    """Digit-by-digit reading: 2024 -> 二零二四."""
    return "".join(DIGITS[int(d)] for d in digits if d.isdigit())


def number_to_zh(text: str) -> str:
    """"3.14" -> 三点一四, "-5" -> 负五, "1,000" -> 一千."""
    text = text.replace(",", "")
    sign = ""
    if text.startswith(("-", "−")):
        sign, text = "负", text[1:]
    elif text.startswith("+"):
        sign, text = "正", text[1:]
    if len(text.split(".")[0]) > 16:  # beyond 万亿: read the digits
        return sign + "".join("点" if d == "." else DIGITS[int(d)] for d in text)
    if "." in text:
        whole, frac = text.split(".", 1)
        return sign + int_to_zh(whole or "0", liang=True) + "点" + digits_to_zh(frac)
    return sign + int_to_zh(text, liang=True)


def _year(m: re.Match) -> str:
    return digits_to_zh(m.group(1)) + "年"


def _date_full(m: re.Match) -> str:
    y, mo, d = m.group(1), m.group(2), m.group(3)
    return f"{digits_to_zh(y)}年{int_to_zh(mo)}月{int_to_zh(d)}日"


def _time(m: re.Match) -> str:
    h, mi, s = m.group(1), m.group(2), m.group(3)
    out = int_to_zh(h, liang=False) + "点"
    if h == "2" or h == "02":
        out = "两点"
    if int(mi) or s:
        out += ("零" if mi.startswith("0") and int(mi) else "") + int_to_zh(mi) + "分"
    if s:
        out += ("零" if s.startswith("0") and int(s) else "") + int_to_zh(s) + "秒"
    return out


def _percent(m: re.Match) -> str:
    return "百分之" + number_to_zh(m.group(1))


def _permille(m: re.Match) -> str:
    return "千分之" + number_to_zh(m.group(1))


def _fraction(m: re.Match) -> str:
    return int_to_zh(m.group(2)) + "分之" + int_to_zh(m.group(1))


def _range(m: re.Match) -> str:
    return number_to_zh(m.group(1)) + "到" + number_to_zh(m.group(2))


_CURRENCY = {"$": "美元", "US$": "美元", "¥": "元", "￥": "元", "€": "欧元", "£": "英镑", "HK$": "港元"}


def _money(m: re.Match) -> str:
    amount = m.group(2)
    if "." in amount:
        amount = amount.rstrip("0").rstrip(".")
    scale = m.group(3) or ""
    return number_to_zh(amount) + scale + _CURRENCY[m.group(1)]


def _unit(m: re.Match) -> str:
    return number_to_zh(m.group(1)) + ZH_UNITS[m.group(2)]


def _phone(m: re.Match) -> str:
    return digits_to_zh(m.group(0))


def _plain_number(m: re.Match) -> str:
    text = m.group(0)
    following = m.string[m.end():m.end() + 1]
    preceding = m.string[m.start() - 1:m.start()] if m.start() else ""
    if (text == "2" and following in _LIANG_MEASURES and preceding != "第"
            and m.string[m.end():m.end() + 2] != "年级"):
        return "两"
    if "." in text and following in "元块":
        text = text.rstrip("0").rstrip(".")
    if "." not in text and len(text.replace(",", "")) > 1 and text.startswith("0"):
        return digits_to_zh(text)  # 007, room numbers, codes
    return number_to_zh(text)


def normalize_zh(text: str) -> str:
    """Normalise one Chinese segment (already NFKC-folded by the caller)."""
    text = text.replace("／", "/")
    # interjections the v2 model was trained to read as ordinary syllables: 嗯 -> 恩 (en1), 呣 -> 母 (mu3)
    text = text.replace("嗯", "恩").replace("呣", "母")
    text = re.sub(r"(?<![\d.])\.(?=\d)", "0.", text)  # .5 -> 0.5
    # dates and times first, before their digits are read as plain numbers
    text = re.sub(r"(\d{4})\s*[-/.]\s*(\d{1,2})\s*[-/.]\s*(\d{1,2})(?!\d)", _date_full, text)
    text = re.sub(r"(?<!\d)(\d{4})\s*年", _year, text)
    text = re.sub(r"(\d{1,2}):(\d{2})(?::(\d{2}))?(?!\d)", _time, text)
    text = re.sub(r"(?:(?<=[^\d])|^)(1\d{10})(?!\d)", _phone, text)  # mobile numbers digit by digit
    text = re.sub(r"([-+]?\d+(?:\.\d+)?)\s*[%％]", _percent, text)
    text = re.sub(r"([-+]?\d+(?:\.\d+)?)\s*‰", _permille, text)
    text = re.sub(r"(US\$|HK\$|[$¥￥€£])\s*(\d[\d,]*(?:\.\d+)?)\s*(万|亿)?", _money, text)
    text = re.sub(r"(?<![\d.])(\d+)/(\d+)(?![\d/])", _fraction, text)
    text = re.sub(rf"([-+]?\d[\d,]*(?:\.\d+)?)\s*({_UNIT_PATTERN})(?![A-Za-z])", _unit, text)
    text = re.sub(r"(\d+(?:\.\d+)?)\s*[-~～]\s*(\d+(?:\.\d+)?)", _range, text)
    text = re.sub(r"(?<![\d])-(?=\d)", "负", text)
    text = re.sub(r"\d+(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?", _plain_number, text)
    text = re.sub(r"负(?=负)", "", text)
    text = text.replace("+", "加").replace("=", "等于").replace("&", "和").replace("@", "艾特")
    text = text.replace("...", "…").replace("负", "负")
    out = []
    for ch in text:
        if re.match(rf"[{_CJK}]", ch):
            out.append(ch)
        elif ch in _PUNCT_MAP:
            out.append(_PUNCT_MAP[ch])
        elif ch in "￥¥":  # a yen sign without an amount: the SP2 pause (NFKC folds ￥ to ¥)
            out.append("￥")
        elif ch == "^":  # SP3 pause
            out.append(ch)
        # anything else (spaces, quotes, brackets, stray symbols) is dropped
    return collapse_punctuation("".join(out))


def collapse_punctuation(text: str) -> str:
    """A run of punctuation keeps its first mark: "?!" -> "?", ",," -> ","."""
    return re.sub(r"([!?…,.\-])[!?…,.\-]+", r"\1", text)
