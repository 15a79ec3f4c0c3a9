"""The files a succeeded task serves: a tiny but decodable H.264 MP4 and a PNG, both deterministic
per task id, so a download can be checked byte for byte.
"""

from __future__ import annotations

import hashlib
import random
import struct
import zlib


class _Bits:
    """An H.264 RBSP writer: fixed-width fields, Exp-Golomb codes, the trailing stop bit."""

    def __init__(self) -> None:
        self.bits: list[int] = []

    def u(self, n: int, v: int) -> None:
        self.bits.extend((v >> i) & 1 for i in range(n - 1, -1, -1))

    def ue(self, v: int) -> None:
        v += 1
        self.u(v.bit_length() - 1, 0)
        self.u(v.bit_length(), v)

    def se(self, v: int) -> None:
        self.ue(2 * v - 1 if v > 0 else -2 * v)

    def align(self) -> None:
        while len(self.bits) % 8:
            self.bits.append(0)

    def raw(self, data: bytes) -> None:
        for b in data:
            self.u(8, b)

    def trailing(self) -> bytes:
        self.bits.append(1)
        self.align()
        out = bytearray()
        for i in range(0, len(self.bits), 8):
            byte = 0
            for bit in self.bits[i : i + 8]:
                byte = (byte << 1) | bit
            out.append(byte)
        return bytes(out)


def _nal(header: int, rbsp: bytes) -> bytes:
    out = bytearray([header])
    zeros = 0
    for b in rbsp:
        if zeros >= 2 and b <= 3:
            out.append(3)
            zeros = 0
        out.append(b)
        zeros = zeros + 1 if b == 0 else 0
    return bytes(out)


def _box(kind: bytes, *parts: bytes) -> bytes:
    payload = b"".join(parts)
    return struct.pack(">I", 8 + len(payload)) + kind + payload


def _full_box(kind: bytes, version: int, flags: int, *parts: bytes) -> bytes:
    return _box(kind, struct.pack(">I", (version << 24) | flags), *parts)


_MATRIX = struct.pack(">9I", 0x00010000, 0, 0, 0, 0x00010000, 0, 0, 0, 0x40000000)
_VIDEO_W, _VIDEO_H = 64, 36


def _sps(mbs_w: int, mbs_h: int) -> bytes:
    sps = _Bits()
    sps.u(8, 66)  # profile_idc: baseline
    sps.u(8, 0xC0)  # constraint_set0/1
    sps.u(8, 30)  # level_idc
    sps.ue(0)  # seq_parameter_set_id
    sps.ue(0)  # log2_max_frame_num_minus4
    sps.ue(2)  # pic_order_cnt_type
    sps.ue(1)  # max_num_ref_frames
    sps.u(1, 0)  # gaps_in_frame_num_value_allowed_flag
    sps.ue(mbs_w - 1)
    sps.ue(mbs_h - 1)
    sps.u(1, 1)  # frame_mbs_only_flag
    sps.u(1, 1)  # direct_8x8_inference_flag
    crop_bottom = (mbs_h * 16 - _VIDEO_H) // 2
    sps.u(1, 1 if crop_bottom else 0)
    if crop_bottom:
        sps.ue(0)
        sps.ue(0)
        sps.ue(0)
        sps.ue(crop_bottom)
    sps.u(1, 0)  # vui_parameters_present_flag
    return _nal(0x67, sps.trailing())


def _pps() -> bytes:
    pps = _Bits()
    pps.ue(0)
    pps.ue(0)
    pps.u(1, 0)  # entropy_coding_mode_flag: CAVLC
    pps.u(1, 0)
    pps.ue(0)  # num_slice_groups_minus1
    pps.ue(0)
    pps.ue(0)
    pps.u(1, 0)  # weighted_pred_flag
    pps.u(2, 0)  # weighted_bipred_idc
    pps.se(0)
    pps.se(0)
    pps.se(0)
    pps.u(1, 1)  # deblocking_filter_control_present_flag
    pps.u(1, 0)
    pps.u(1, 0)
    return _nal(0x68, pps.trailing())


def _idr_frame(task_id: str, n_mbs: int) -> bytes:
    """Every macroblock I_PCM, its samples derived from the task id: decodable without a real encoder."""
    digest = hashlib.sha256(task_id.encode()).digest()
    idr = _Bits()
    idr.ue(0)  # first_mb_in_slice
    idr.ue(7)  # slice_type: I (all)
    idr.ue(0)  # pic_parameter_set_id
    idr.u(4, 0)  # frame_num
    idr.ue(0)  # idr_pic_id
    idr.u(1, 0)  # no_output_of_prior_pics_flag
    idr.u(1, 0)  # long_term_reference_flag
    idr.se(0)  # slice_qp_delta
    idr.ue(1)  # disable_deblocking_filter_idc
    for mb in range(n_mbs):
        idr.ue(25)  # mb_type: I_PCM
        idr.align()
        base = 32 + digest[mb % 32] % 160
        idr.raw(bytes(min(235, base + (i % 16) * 2 + (i // 16)) for i in range(256)))
        idr.raw(bytes([16 + digest[(mb + 7) % 32] % 200]) * 64)
        idr.raw(bytes([16 + digest[(mb + 13) % 32] % 200]) * 64)
    return _nal(0x65, idr.trailing())


def _p_frame(n: int, n_mbs: int) -> bytes:
    p = _Bits()
    p.ue(0)
    p.ue(5)  # slice_type: P (all)
    p.ue(0)
    p.u(4, n % 16)  # frame_num
    p.u(1, 0)  # num_ref_idx_active_override_flag
    p.u(1, 0)  # ref_pic_list_modification_flag_l0
    p.u(1, 0)  # adaptive_ref_pic_marking_mode_flag
    p.se(0)
    p.ue(1)
    p.ue(n_mbs)  # mb_skip_run: every macroblock skipped
    return _nal(0x41, p.trailing())


def _h264_stream(task_id: str, n_frames: int) -> tuple[bytes, bytes, list[bytes]]:
    """SPS, PPS and one NAL per frame: an I_PCM IDR frame, then P frames of skipped macroblocks."""
    mbs_w, mbs_h = (_VIDEO_W + 15) // 16, (_VIDEO_H + 15) // 16
    n_mbs = mbs_w * mbs_h
    frames = [_idr_frame(task_id, n_mbs)] + [_p_frame(n, n_mbs) for n in range(1, n_frames)]
    return _sps(mbs_w, mbs_h), _pps(), frames


def make_mp4(task_id: str, duration_s: int = 5, target_bytes: int = 0) -> bytes:
    """A small valid H.264 MP4 (ftyp, moov, mdat, optional free padding), deterministic per task id."""
    n_frames = max(1, duration_s * 24)
    sps, pps, nals = _h264_stream(task_id, n_frames)
    samples = [struct.pack(">I", len(n)) + n for n in nals]
    mdat_payload = b"".join(samples)
    w, h = _VIDEO_W, _VIDEO_H
    ftyp = _box(b"ftyp", b"isom", struct.pack(">I", 512), b"isomiso2avc1mp41")

    def moov(mdat_offset: int) -> bytes:
        dur_ms = n_frames * 1000 // 24
        mvhd = _full_box(
            b"mvhd", 0, 0, struct.pack(">IIII", 0, 0, 1000, dur_ms), struct.pack(">IH", 0x00010000, 0x0100),
            bytes(10), _MATRIX, bytes(24), struct.pack(">I", 2),
        )  # fmt: skip
        tkhd = _full_box(
            b"tkhd", 0, 3, struct.pack(">IIII", 0, 0, 1, 0), struct.pack(">I", dur_ms), bytes(8),
            struct.pack(">hhhH", 0, 0, 0, 0), _MATRIX, struct.pack(">II", w << 16, h << 16),
        )  # fmt: skip
        mdhd = _full_box(
            b"mdhd", 0, 0, struct.pack(">IIII", 0, 0, 24, n_frames), struct.pack(">HH", 0x55C4, 0)
        )
        hdlr = _full_box(b"hdlr", 0, 0, bytes(4), b"vide", bytes(12), b"VideoHandler\x00")
        vmhd = _full_box(b"vmhd", 0, 1, bytes(8))
        dinf = _box(b"dinf", _full_box(b"dref", 0, 0, struct.pack(">I", 1), _full_box(b"url ", 0, 1)))
        avcc = _box(
            b"avcC", bytes([1, sps[1], sps[2], sps[3], 0xFF, 0xE1]), struct.pack(">H", len(sps)), sps,
            bytes([1]), struct.pack(">H", len(pps)), pps,
        )  # fmt: skip
        avc1 = _box(
            b"avc1", bytes(6), struct.pack(">H", 1), bytes(16), struct.pack(">HH", w, h),
            struct.pack(">II", 0x00480000, 0x00480000), bytes(4), struct.pack(">H", 1),
            bytes([11]) + b"seedancesim" + bytes(20), struct.pack(">Hh", 0x18, -1), avcc,
        )  # fmt: skip
        stsd = _full_box(b"stsd", 0, 0, struct.pack(">I", 1), avc1)
        stts = _full_box(b"stts", 0, 0, struct.pack(">III", 1, n_frames, 1))
        stss = _full_box(b"stss", 0, 0, struct.pack(">II", 1, 1))
        stsc = _full_box(b"stsc", 0, 0, struct.pack(">IIII", 1, 1, n_frames, 1))
        stsz = _full_box(
            b"stsz",
            0,
            0,
            struct.pack(">II", 0, n_frames),
            b"".join(struct.pack(">I", len(s)) for s in samples),
        )
        stco = _full_box(b"stco", 0, 0, struct.pack(">II", 1, mdat_offset))
        stbl = _box(b"stbl", stsd, stts, stss, stsc, stsz, stco)
        minf = _box(b"minf", vmhd, dinf, stbl)
        trak = _box(b"trak", tkhd, _box(b"mdia", mdhd, hdlr, minf))
        return _box(b"moov", mvhd, trak)

    head_len = len(ftyp) + len(moov(0))
    out = ftyp + moov(head_len + 8) + _box(b"mdat", mdat_payload)
    pad = target_bytes - len(out) - 8
    if pad >= 0:
        rng = random.Random(int.from_bytes(hashlib.sha256(task_id.encode()).digest()[:8], "big"))
        out += _box(b"free", rng.randbytes(pad))
    return out


def make_png(task_id: str, width: int = _VIDEO_W, height: int = _VIDEO_H) -> bytes:
    """A small valid RGB PNG whose colour is derived from the task id."""
    d = hashlib.sha256(task_id.encode()).digest()
    row = b"\x00" + bytes(d[0:3]) * width
    raw = row * height

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )
