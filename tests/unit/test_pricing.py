"""Pricing rules (which price of the table applies to a job) and the token formula of the estimate."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from seedance_worker.errors import ConfigError
from seedance_worker.models import CreateRequest
from seedance_worker.pricing import PriceFacts, compute_amount, load_price_table, match_price
from seedance_worker.quote import estimate_request, request_facts
from seedance_worker.testing.simulator.task import echo_fields
from seedance_worker.tokens import SIZES_1_0, SIZES_2X, estimate_tokens, frame_count, sizes_for, video_tokens

V20 = "dreamina-seedance-2-0-260128"
V20_FAST = "dreamina-seedance-2-0-fast-260128"
PRO15 = "seedance-1-5-pro-251215"
PRO10 = "seedance-1-0-pro-250528"
TABLE = {
    V20: {"default": "7.7", "video_input": {"default": "4.7"}},
    V20_FAST: {"default": "5.6", "video_input": {"default": "3.3"}},
    PRO15: {"default": "2.4", "flex": "1.2",
            "resolution": {"1080p": {"default": "3.0", "flex": "1.5", "video_input": {"default": "9"}}}},
    "*": {"default": "3.00"},
}  # fmt: skip
TEXT = [{"type": "text", "text": "a red fox in snow"}]
VIDEO = [
    *TEXT,
    {"type": "video_url", "video_url": {"url": "https://x.test/ref.mp4"}, "role": "reference_video"},
]


def table_file(tmp_path: Path, data: Any) -> Path:
    path = tmp_path / "prices.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


@pytest.fixture
def table(tmp_path: Path) -> Any:
    return load_price_table(table_file(tmp_path, TABLE))


# --- the token formula ----------------------------------------------------------------------------


def test_the_seed_example_121_frames_of_1280x720_are_108900_tokens() -> None:
    """5 s at 24 fps are 121 frames (Seedance adds one); 121 x 1280 x 720 / 1024 = 108,900."""
    assert frame_count(5) == 121
    assert video_tokens(121, 1280, 720) == 108_900
    est = estimate_tokens(V20, resolution="720p", ratio="16:9", duration_s=5)
    assert est is not None and est.tokens == 108_900 and est.exact
    assert (est.frames, est.width, est.height) == (121, 1280, 720)


def test_sizes_follow_the_model_family_resolution_and_ratio() -> None:
    """1.0 renders 720p 16:9 at 1248x704, 1.5/2.x at 1280x720; 9:16 swaps the sides."""
    one = estimate_tokens(PRO10, resolution="720p", ratio="16:9", duration_s=5)
    assert one is not None and (one.width, one.height, one.tokens) == (1248, 704, 121 * 1248 * 704 // 1024)
    tall = estimate_tokens(V20_FAST, resolution="480p", ratio="9:16", duration_s=10)
    assert tall is not None and (tall.width, tall.height, tall.frames) == (496, 864, 241)
    assert tall.tokens == 241 * 496 * 864 // 1024  # 100,850.25 rounded down
    assert set(SIZES_1_0) == {"480p", "720p", "1080p"} and set(SIZES_2X) == {"480p", "720p", "1080p", "4k"}
    assert all(len(row) == 6 for table in (SIZES_1_0, SIZES_2X) for row in table.values())


def test_absent_fields_take_the_api_defaults() -> None:
    """No resolution: 720p (1080p on 1.0); no duration: 5 s; `frames` (1.0) wins over duration."""
    est = estimate_tokens(PRO10, ratio="16:9")
    assert est is not None and (est.resolution, est.width, est.height, est.frames) == (
        "1080p",
        1920,
        1088,
        121,
    )
    framed = estimate_tokens(PRO10, resolution="480p", ratio="1:1", frames=29, duration_s=10)
    assert framed is not None and framed.tokens == 29 * 640 * 640 // 1024 and framed.exact


def test_open_facts_give_an_upper_bound_marked_not_exact() -> None:
    """Adaptive ratio: the resolution's largest size; duration -1: the family's longest video; a
    reference video or an unknown model family: said in the notes; none of them exact."""
    adaptive = estimate_tokens(V20, resolution="720p")
    assert adaptive is not None and not adaptive.exact
    assert adaptive.width * adaptive.height == max(w * h for w, h in SIZES_2X["720p"].values())
    chosen = estimate_tokens(V20, resolution="720p", ratio="16:9", duration_s=-1)
    assert chosen is not None and chosen.frames == frame_count(15) and not chosen.exact
    video = estimate_tokens(V20, resolution="720p", ratio="16:9", duration_s=5, has_video_input=True)
    assert video is not None and video.tokens == 108_900 and not video.exact
    endpoint = estimate_tokens("ep-20260101-abc", resolution="720p", ratio="16:9", duration_s=5)
    assert endpoint is not None and endpoint.tokens == 108_900 and "family unknown" in endpoint.notes[0]
    assert estimate_tokens(PRO10, resolution="4k", ratio="16:9") is None  # no 4k size for 1.0


@pytest.mark.parametrize("model", [V20, V20_FAST, PRO15, PRO10])
def test_the_simulator_reports_the_usage_the_estimate_predicts(model: str) -> None:
    """For every explicit size of the model's table the simulator's usage (what its GET reports)
    is the estimate made from the same request."""
    checked = 0
    for resolution, ratios in sizes_for(model).items():
        for ratio in ratios:
            for extra in ({"duration": 7}, {"frames": 57} if model == PRO10 else {"duration": 4}):
                req = {"model": model, "content": TEXT, "resolution": resolution, "ratio": ratio, **extra}
                _, sim_tokens = echo_fields("cgt-20260101000000-abcde", model, req)
                est = estimate_request(CreateRequest.model_validate(req), {}, "USD")
                assert est is not None and est["tokens"] == sim_tokens and est["exact"], req
                checked += 1
    assert checked == 2 * 6 * len(sizes_for(model))


# --- which price applies --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("facts", "price", "rule"),
    [
        (PriceFacts(V20, "default", "720p", False), "7.7", f"{V20}/default"),
        (PriceFacts(V20, "default", "720p", True), "4.7", f"{V20}/video_input/default"),
        (PriceFacts(V20, None, "480p", True), "4.7", f"{V20}/video_input/default"),
        (PriceFacts(V20_FAST, "default", "720p", False), "5.6", f"{V20_FAST}/default"),
        (PriceFacts(V20_FAST, "default", "720p", True), "3.3", f"{V20_FAST}/video_input/default"),
        (PriceFacts(PRO15, "default", "720p", False), "2.4", f"{PRO15}/default"),
        (PriceFacts(PRO15, "flex", "720p", False), "1.2", f"{PRO15}/flex"),
        (PriceFacts(PRO15, "flex", "1080p", False), "1.5", f"{PRO15}/resolution=1080p/flex"),
        (PriceFacts(PRO15, "default", "1080P", True), "9", f"{PRO15}/resolution=1080p/video_input/default"),
        (PriceFacts(PRO15, "default", "720p", None), "2.4", f"{PRO15}/default"),  # no video_input block here
        (PriceFacts("seedance-1-0-pro-250528", "default", "1080p", None), "3.00", "*/default"),
    ],
)
def test_the_price_that_applies_and_its_rule(table: Any, facts: PriceFacts, price: str, rule: str) -> None:
    match = match_price(table, facts)
    assert match.price == Decimal(price) and match.rule == rule


def test_no_other_tier_or_outer_block_stands_in(table: Any) -> None:
    """A block reached without the job's tier prices nothing there; only "*" is tried next."""
    flex_video = match_price(
        table, PriceFacts(PRO15, "flex", "1080p", True)
    )  # the 1080p video block: default only
    assert flex_video.price is None
    assert flex_video.reason == f"no price at {PRO15}/resolution=1080p/video_input/flex; no price at */flex"
    assert match_price(table, PriceFacts(V20, "flex", "720p", False)).price is None


def test_an_unknown_video_input_is_left_unpriced_not_guessed(table: Any) -> None:
    """A tracked 2.0 task (input not known here) gets no price: neither 7.7 nor 4.7, nor "*"'s."""
    match = match_price(table, PriceFacts(V20, "default", "720p", None))
    assert match.price is None and match.fact_unknown
    assert match.reason == f"{V20}: the price depends on video input, which is not known"


def test_the_old_table_format_prices_as_before(tmp_path: Path) -> None:
    """{"<model>": {"default": .., "flex": ..}, "*": {...}} is still a table, priced by model and tier."""
    old = load_price_table(
        table_file(tmp_path, {PRO15: {"default": "5.00", "flex": "2.50"}, "*": {"default": "1"}})
    )
    assert match_price(old, PriceFacts(PRO15, "flex")).price == Decimal("2.50")
    assert match_price(old, PriceFacts("other")).rule == "*/default"
    assert match_price({}, PriceFacts(PRO15)).reason == "no price table (SEEDANCE_PRICE_TABLE)"


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ({V20: {"default": "7.7", "video_input": "4.7"}}, f"{V20}/video_input: expected an object"),
        ({V20: {"video_input": {"resolution": {"720p": {"default": "1"}}}}}, "directly under the model"),
        ({PRO15: {"resolution": "1080p"}}, f"{PRO15}/resolution: expected an object like"),
        ({PRO15: {"default": "2", "videoinput": {"default": "1"}}}, f"'{PRO15}/videoinput': price must be"),
        (
            {PRO15: {"resolution": {"1080p": {"flex": "-1"}}}},
            f"'{PRO15}/resolution/1080p/flex': price must be",
        ),
    ],
)
def test_a_bad_rule_names_the_setting_and_where(tmp_path: Path, content: Any, problem: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_price_table(table_file(tmp_path, content))
    assert str(err.value).startswith("SEEDANCE_PRICE_TABLE=") and problem in str(err.value)


# --- the estimate of a request --------------------------------------------------------------------


def test_request_facts_record_what_the_get_does_not_return() -> None:
    """Model, tier, resolution, ratio, duration and whether any content item is a video_url."""
    req = CreateRequest.model_validate({"model": V20, "content": VIDEO, "ratio": "16:9"})
    assert request_facts(req) == {
        "model": V20, "service_tier": "default", "resolution": "720p", "ratio": "16:9",
        "duration": 5, "has_video_input": True,
    }  # fmt: skip
    images = [
        *TEXT,
        {"type": "image_url", "image_url": {"url": "https://x.test/a.png"}, "role": "first_frame"},
    ]
    flex = CreateRequest.model_validate(
        {"model": PRO15, "content": images, "service_tier": "flex", "frames": 29}
    )
    assert request_facts(flex)["has_video_input"] is False and request_facts(flex)["frames"] == 29


def test_the_estimate_is_priced_by_the_same_rules(table: Any) -> None:
    """108,900 tokens of 2.0 are 0.83853 without video input and 0.51183 with; 1.5 flex is half."""
    text = estimate_request(
        CreateRequest.model_validate({"model": V20, "content": TEXT, "ratio": "16:9"}), table, "USD"
    )
    video = estimate_request(
        CreateRequest.model_validate({"model": V20, "content": VIDEO, "ratio": "16:9"}), table, "USD"
    )
    assert text is not None and video is not None
    assert (text["amount"], text["price_rule"], text["price_per_million"]) == (
        "0.83853",
        f"{V20}/default",
        "7.7",
    )
    assert (video["amount"], video["price_rule"]) == ("0.51183", f"{V20}/video_input/default")
    base = {"model": PRO15, "content": TEXT, "ratio": "16:9"}
    default = estimate_request(CreateRequest.model_validate(base), table, "EUR")
    flex = estimate_request(CreateRequest.model_validate({**base, "service_tier": "flex"}), table, "EUR")
    assert default is not None and flex is not None and default["currency"] == "EUR"
    assert (
        Decimal(flex["amount"]) * 2
        == Decimal(default["amount"])
        == Decimal(compute_amount(108_900, Decimal("2.4")) or "")
    )
