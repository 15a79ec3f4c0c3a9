"""What a create request will cost, known before the POST: its price facts and its estimate.

``request_facts`` are the facts a price depends on that the GET does not return (the model asked
for, the tier, the resolution, whether the content held a video), recorded in the job at submit
and read by the charge. ``estimate_request`` prices the tokens of ``tokens.estimate_tokens`` with the table.
"""

from __future__ import annotations

from typing import Any

from seedance_worker.models import CreateRequest, VideoItem
from seedance_worker.pricing import DEFAULT_TIER, PriceFacts, PriceTable, compute_amount, match_price
from seedance_worker.tokens import ADAPTIVE, DEFAULT_DURATION_S, default_resolution, estimate_tokens


def has_video_input(req: CreateRequest) -> bool:
    """Any content item of type ``video_url`` (a reference video)."""
    return any(isinstance(item, VideoItem) for item in req.content)


def request_facts(req: CreateRequest) -> dict[str, Any]:
    """The price facts of a request, absent fields as Ark fills them (tier ``default``, 720p or
    1080p on 1.0, 5 s, ratio ``adaptive``)."""
    facts: dict[str, Any] = {
        "model": req.model,
        "service_tier": req.service_tier or DEFAULT_TIER,
        "resolution": req.resolution or default_resolution(req.model),
        "ratio": req.ratio or ADAPTIVE,
        "has_video_input": has_video_input(req),
    }
    if req.frames is not None:
        facts["frames"] = req.frames
    else:
        facts["duration"] = req.duration if req.duration is not None else DEFAULT_DURATION_S
    return facts


def price_facts(facts: dict[str, Any]) -> PriceFacts:
    video = facts.get("has_video_input")
    return PriceFacts(
        model=facts.get("model"),
        service_tier=facts.get("service_tier"),
        resolution=facts.get("resolution"),
        has_video_input=video if isinstance(video, bool) else None,
    )


def estimate_request(req: CreateRequest, table: PriceTable, currency: str) -> dict[str, Any] | None:
    """Tokens, and their price when the table has one; None when the size is not known (a
    resolution outside the size table)."""
    facts = request_facts(req)
    tokens = estimate_tokens(
        req.model,
        resolution=facts["resolution"],
        ratio=req.ratio,
        duration_s=req.duration,
        frames=req.frames,
        has_video_input=facts["has_video_input"],
    )
    if tokens is None:
        return None
    match = match_price(table, price_facts(facts))
    amount = compute_amount(tokens.tokens, match.price)
    out: dict[str, Any] = tokens.wire()
    out.update(
        amount=amount,
        currency=currency if amount is not None else None,
        price_rule=match.rule if amount is not None else None,
        price_per_million=str(match.price) if amount is not None else None,
    )
    if amount is None:
        out["unpriced"] = match.reason
    return out
