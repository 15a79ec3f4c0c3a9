"""Prices: the optional price table (``SEEDANCE_PRICE_TABLE``), which price applies to a job, and
exact Decimal amounts.

The table is a JSON file of prices per million completion tokens. Each model (``"*"``: any other
model) has a block of service tier -> price, and may narrow it by the facts a job was submitted
with, in two nested blocks::

    {"dreamina-seedance-2-0-260128": {"default": "7.7", "video_input": {"default": "4.7"}},
     "seedance-1-5-pro-251215": {"default": "2.4", "flex": "1.2",
                                 "resolution": {"1080p": {"default": "3.0", "flex": "1.5"}}},
     "*": {"default": "3.00"}}

A job's price: its model's block (else ``"*"``'s); within it the ``resolution`` block of the job's
resolution when there is one; within that the ``video_input`` block when the job's input held a
video; then the job's tier in the block reached (``default`` when none was asked). A block reached
without the tier prices nothing there: the ``"*"`` block is tried next, never another tier's or an
outer block's price. The path walked is the price's ``rule``
(``dreamina-seedance-2-0-260128/video_input/default``). A block with ``video_input`` cannot price a
job whose input is unknown (tracked, not submitted here): it is left unpriced, not guessed.

Amounts are Decimal strings, never floats.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from seedance_worker.errors import ConfigError

PER_MILLION = Decimal(1_000_000)
QUANTUM = Decimal("0.000001")
DEFAULT_TIER = "default"
ANY_MODEL = "*"
VIDEO_INPUT = "video_input"
RESOLUTION = "resolution"


@dataclass(frozen=True)
class PriceBlock:
    """Tier -> price, and the narrower blocks under it."""

    prices: dict[str, Decimal] = field(default_factory=dict)
    video_input: PriceBlock | None = None
    resolution: dict[str, PriceBlock] = field(default_factory=dict)


PriceTable = dict[str, PriceBlock]


@dataclass(frozen=True)
class PriceFacts:
    """What a price may depend on. ``has_video_input`` None: not known (a tracked task)."""

    model: str | None
    service_tier: str | None = None
    resolution: str | None = None
    has_video_input: bool | None = None


@dataclass(frozen=True)
class PriceMatch:
    """The price that applies (None: none does) and why: ``rule`` is the table path walked, or,
    unpriced, ``reason`` says what was missing."""

    price: Decimal | None
    rule: str | None = None
    reason: str | None = None
    fact_unknown: bool = False  # the table asks a fact the job does not carry: no fallback either


def _bad_table(path: Path, problem: str) -> ConfigError:
    return ConfigError(f"SEEDANCE_PRICE_TABLE={path}: {problem}")


def _price(path: Path, where: str, value: Any) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise _bad_table(path, f'{where}: price must be a decimal string like "2.50", got {value!r}')
    try:
        price = Decimal(str(value).strip())
    except InvalidOperation:
        raise _bad_table(path, f"{where}: {value!r} is not a decimal number") from None
    if not price.is_finite() or price < 0:
        raise _bad_table(path, f"{where}: price must be a finite number >= 0, got {value!r}")
    return price


def _block(path: Path, where: str, data: Any, *, top: bool) -> PriceBlock:
    if not isinstance(data, dict) or not data:
        raise _bad_table(path, f"{where}: expected an object of service tier -> price, got {data!r}")
    prices: dict[str, Decimal] = {}
    video: PriceBlock | None = None
    by_res: dict[str, PriceBlock] = {}
    for key, value in data.items():
        here = f"{where}/{key}"
        if key == VIDEO_INPUT:
            video = _block(path, here, value, top=False)
            if video.video_input is not None or video.resolution:
                raise _bad_table(path, f"{here}: a video_input block holds tier prices only")
        elif key == RESOLUTION:
            if not top:
                raise _bad_table(path, f"{here}: resolution blocks go directly under the model")
            if not isinstance(value, dict) or not value:
                raise _bad_table(path, f'{here}: expected an object like {{"1080p": {{"default": "3.0"}}}}')
            by_res = {str(r).lower(): _block(path, f"{here}/{r}", b, top=False) for r, b in value.items()}
        else:
            prices[str(key)] = _price(path, f"'{here}'", value)
    return PriceBlock(prices=prices, video_input=video, resolution=by_res)


def _read_json(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise _bad_table(path, f"cannot read the file ({exc.strerror or type(exc).__name__})") from None
    except UnicodeDecodeError:
        raise _bad_table(path, "the file is not UTF-8 text") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno} column {exc.colno}"
        raise _bad_table(path, f"not valid JSON ({exc.msg} at {where})") from None


def load_price_table(path: Path | str) -> PriceTable:
    """``{model: PriceBlock}`` from a JSON file; a bad file raises ConfigError naming the setting."""
    path = Path(path)
    data = _read_json(path)
    if not isinstance(data, dict):
        raise _bad_table(path, 'expected an object like {"<model>": {"default": "2.50", "flex": "1.25"}}')
    return {str(model): _block(path, str(model), block, top=True) for model, block in data.items()}


def _walk(model_key: str, block: PriceBlock, facts: PriceFacts) -> PriceMatch:
    path = [model_key]
    res = (facts.resolution or "").lower()
    if res in block.resolution:
        block = block.resolution[res]
        path.append(f"{RESOLUTION}={res}")
    if block.video_input is not None:
        if facts.has_video_input is None:
            reason = f"{'/'.join(path)}: the price depends on video input, which is not known"
            return PriceMatch(None, reason=reason, fact_unknown=True)
        if facts.has_video_input:
            block = block.video_input
            path.append(VIDEO_INPUT)
    tier = facts.service_tier or DEFAULT_TIER
    path.append(tier)
    rule = "/".join(path)
    if tier in block.prices:
        return PriceMatch(block.prices[tier], rule=rule)
    return PriceMatch(None, reason=f"no price at {rule}")


def match_price(table: PriceTable, facts: PriceFacts) -> PriceMatch:
    """The price of a job with these facts (module docstring: how the table is walked)."""
    if not table:
        return PriceMatch(None, reason="no price table (SEEDANCE_PRICE_TABLE)")
    reasons: list[str] = []
    for key in dict.fromkeys((facts.model or "", ANY_MODEL)):
        block = table.get(key)
        if block is None:
            continue
        found = _walk(key, block, facts)
        if found.price is not None or found.fact_unknown:
            return found  # unknown input: "*" could charge a video job the text price, so no fallback
        reasons.append(found.reason or "")
    return PriceMatch(None, reason="; ".join(reasons) or f"no price for model {facts.model!r}")


def price_for(table: PriceTable, model: str | None, service_tier: str | None, **facts: Any) -> Decimal | None:
    """The price alone (``match_price`` with these facts)."""
    return match_price(table, PriceFacts(model, service_tier, **facts)).price


def format_amount(value: Decimal) -> str:
    """A Decimal as plain digits: no exponent, no trailing zeros ("0.5445", "12", "0")."""
    text = format(value.quantize(QUANTUM).normalize(), "f")
    return "0" if text in ("-0", "") else text


def compute_amount(tokens: int | None, price_per_million: Decimal | None) -> str | None:
    if tokens is None or price_per_million is None:
        return None
    return format_amount(Decimal(tokens) * price_per_million / PER_MILLION)


def price_table(path: Path | None) -> PriceTable:
    """The configured table (read on each call, so a fixed file takes effect on the next charge)."""
    return load_price_table(path) if path else {}
