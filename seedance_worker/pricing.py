"""Prices: the optional price table (``SEEDANCE_PRICE_TABLE``) and exact Decimal amounts.

The table is a JSON file of prices per million completion tokens by model and service tier,
``"*"`` being the fallback model::

    {"seedance-1-5-pro-251215": {"default": "2.50", "flex": "1.25"}, "*": {"default": "3.00"}}

Amounts are Decimal strings, never floats.
"""

from __future__ import annotations

import json
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from seedance_worker.errors import ConfigError

PER_MILLION = Decimal(1_000_000)
QUANTUM = Decimal("0.000001")
DEFAULT_TIER = "default"
ANY_MODEL = "*"


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


def load_price_table(path: Path | str) -> dict[tuple[str, str], Decimal]:
    """``{(model, service_tier): price per million completion tokens}`` from a JSON file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise _bad_table(path, f"cannot read the file ({exc.strerror or type(exc).__name__})") from None
    except UnicodeDecodeError:
        raise _bad_table(path, "the file is not UTF-8 text") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno} column {exc.colno}"
        raise _bad_table(path, f"not valid JSON ({exc.msg} at {where})") from None
    if not isinstance(data, dict):
        raise _bad_table(path, 'expected an object like {"<model>": {"default": "2.50", "flex": "1.25"}}')
    table: dict[tuple[str, str], Decimal] = {}
    for model, tiers in data.items():
        if not isinstance(tiers, dict) or not tiers:
            raise _bad_table(
                path, f"model {model!r}: expected an object of service tier -> price, got {tiers!r}"
            )
        for tier, value in tiers.items():
            table[(str(model), str(tier))] = _price(path, f"{model!r}/{tier!r}", value)
    return table


def price_for(
    table: dict[tuple[str, str], Decimal], model: str | None, service_tier: str | None
) -> Decimal | None:
    """The model's price for the tier, else the ``"*"`` model's; never another tier's price."""
    tier = service_tier or DEFAULT_TIER
    for key in ((model or "", tier), (ANY_MODEL, tier)):
        if key in table:
            return table[key]
    return None


def format_amount(value: Decimal) -> str:
    """A Decimal as plain digits: no exponent, no trailing zeros ("0.5445", "12", "0")."""
    text = format(value.quantize(QUANTUM).normalize(), "f")
    return "0" if text in ("-0", "") else text


def compute_amount(tokens: int | None, price_per_million: Decimal | None) -> str | None:
    if tokens is None or price_per_million is None:
        return None
    return format_amount(Decimal(tokens) * price_per_million / PER_MILLION)


def price_table(path: Path | None) -> dict[tuple[str, str], Decimal]:
    """The configured table (read on each call, so a fixed file takes effect on the next charge)."""
    return load_price_table(path) if path else {}
