"""Video tokens from a create request: ``frames x width x height / 1024``, as Seedance bills them.

121 frames (5 s x 24 fps + 1) of 1280x720 are 108,900 tokens, the ``usage`` Ark reports for a 720p
5 s Seedance 2.0 task. The sizes per resolution and ratio are those Seedance renders: one table for
Seedance 1.0 (pro, pro-fast, lite), one for 1.5 pro and the 2.x models (also the table for a model
whose family the name does not tell, such as an endpoint id ``ep-...``).

Pure: no settings, no Redis. The simulator counts its ``usage`` with the same functions, so an
estimate made at submit equals what the simulator then reports.
"""

from __future__ import annotations

from dataclasses import dataclass

FPS = 24
TOKEN_PIXELS = 1024
DEFAULT_DURATION_S = 5
ADAPTIVE = "adaptive"

Sizes = dict[str, dict[str, tuple[int, int]]]
_RATIOS = ("16:9", "4:3", "1:1", "3:4", "9:16", "21:9")


def _table(rows: dict[str, tuple[tuple[int, int], ...]]) -> Sizes:
    return {res: dict(zip(_RATIOS, sizes, strict=True)) for res, sizes in rows.items()}


SIZES_1_0: Sizes = _table(
    {
        "480p": ((864, 480), (736, 544), (640, 640), (544, 736), (480, 864), (960, 416)),
        "720p": ((1248, 704), (1120, 832), (960, 960), (832, 1120), (704, 1248), (1504, 640)),
        "1080p": ((1920, 1088), (1664, 1248), (1440, 1440), (1248, 1664), (1088, 1920), (2176, 928)),
    }
)
SIZES_2X: Sizes = _table(
    {
        "480p": ((864, 496), (752, 560), (640, 640), (560, 752), (496, 864), (992, 432)),
        "720p": ((1280, 720), (1112, 834), (960, 960), (834, 1112), (720, 1280), (1470, 630)),
        "1080p": ((1920, 1080), (1664, 1248), (1440, 1440), (1248, 1664), (1080, 1920), (2206, 946)),
        "4k": ((3840, 2160), (3326, 2494), (2880, 2880), (2494, 3326), (2160, 3840), (4398, 1886)),
    }
)
# The longest video a model may choose for duration -1, by family (an estimate must not undercount).
MAX_DURATION_S = {"2.5": 30, "2.0": 15, "1.5": 12, "1.0": 12}


def model_family(model: str) -> str | None:
    """The family ("2.5", "2.0", "1.5", "1.0") of a model id like ``dreamina-seedance-2-0-260128``."""
    m = model.lower()
    for tag, fam in (("2-5", "2.5"), ("2-0", "2.0"), ("1-5", "1.5"), ("1-0", "1.0")):
        if f"seedance-{tag}" in m:
            return fam
    return None


def default_resolution(model: str) -> str:
    """What Ark renders when the request names no resolution: 1080p on 1.0, else 720p."""
    return "1080p" if model_family(model) == "1.0" else "720p"


def sizes_for(model: str) -> Sizes:
    return SIZES_1_0 if model_family(model) == "1.0" else SIZES_2X


def frame_count(duration_s: int, fps: int = FPS) -> int:
    """Seedance renders ``duration x fps + 1`` frames: 5 s at 24 fps are 121."""
    return duration_s * fps + 1


def video_tokens(frames: int, width: int, height: int) -> int:
    """``frames x width x height / 1024``, rounded down."""
    return frames * width * height // TOKEN_PIXELS


@dataclass(frozen=True)
class TokenEstimate:
    """The tokens of one video and what they were worked out from. ``exact`` is False when a fact
    was open at submit (an adaptive ratio, a duration the model chooses, a reference video, an
    unknown model family): ``tokens`` is then an upper bound of the output, or a best guess."""

    tokens: int
    frames: int
    width: int
    height: int
    resolution: str
    ratio: str
    exact: bool
    notes: tuple[str, ...] = ()

    def wire(self) -> dict[str, object]:
        out: dict[str, object] = {
            "tokens": self.tokens, "frames": self.frames, "width": self.width, "height": self.height,
            "resolution": self.resolution, "ratio": self.ratio, "exact": self.exact,
        }  # fmt: skip
        if self.notes:
            out["notes"] = list(self.notes)
        return out


def _frames(model: str, duration_s: int | None, frames: int | None, notes: list[str]) -> int:
    if frames is not None:
        return frames
    if duration_s is None:
        return frame_count(DEFAULT_DURATION_S)
    if duration_s == -1:
        longest = MAX_DURATION_S.get(model_family(model) or "", max(MAX_DURATION_S.values()))
        notes.append(f"duration -1: the model chooses; counted at its longest, {longest} s")
        return frame_count(longest)
    return frame_count(duration_s)


def _size(table: dict[str, tuple[int, int]], ratio: str, notes: list[str]) -> tuple[str, tuple[int, int]]:
    if ratio in table:
        return ratio, table[ratio]
    # Adaptive follows the input image: counted at the resolution's largest size (an upper bound).
    best = max(table, key=lambda r: table[r][0] * table[r][1])
    notes.append(f"ratio {ratio}: counted at the largest {best} size")
    return best, table[best]


def estimate_tokens(
    model: str,
    *,
    resolution: str | None = None,
    ratio: str | None = None,
    duration_s: int | None = None,
    frames: int | None = None,
    has_video_input: bool = False,
) -> TokenEstimate | None:
    """The output video's tokens, from what a create request carries; None for a resolution the
    size table does not have. Absent fields take Ark's defaults (720p, or 1080p on 1.0; 5 s;
    ``adaptive``)."""
    res = (resolution or default_resolution(model)).lower()
    table = sizes_for(model).get(res)
    if table is None:
        return None
    notes: list[str] = []
    n = _frames(model, duration_s, frames, notes)
    used_ratio, (width, height) = _size(table, ratio or ADAPTIVE, notes)
    if model_family(model) is None:
        notes.append(f"model {model!r}: family unknown, 1.5/2.x sizes assumed")
    if has_video_input:
        notes.append("reference video: Ark adds its duration to the output's; not counted here")
    return TokenEstimate(
        tokens=video_tokens(n, width, height), frames=n, width=width, height=height,
        resolution=res, ratio=used_ratio, exact=not notes, notes=tuple(notes),
    )  # fmt: skip
