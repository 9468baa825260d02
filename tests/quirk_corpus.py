"""A corpus of real-world video quirks, encoded at test time by the system's ffmpeg (Debian's in CI).

Each entry is a file as downloads and the paper's data sets have them: MPEG-4 Part 2 AVI with and
without B-frames (Xvid/DivX tags, UCF101 and HMDB51), MS-MPEG-4, MJPEG, Cinepak with dropped
frames, an AVI without its index, VP8/VP9 WebM (SSv2), AV1, HEVC, H.264 with B-pyramids and open
GOPs, an edit list, rotation metadata, variable frame rate, MPEG-TS, FLV, 3GP, 4:2:2 and 10-bit,
odd sizes, a truncated tail, a late start. Clips are short and small (2-3 s, at most 176x144) so
the whole corpus encodes in a few seconds. testsrc draws a frame counter, so frames differ.

Used by tests/test_real_world_corpus.py, the doctor's test and bench/bench_corpus.py.
"""
import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Optional

SRC = "testsrc=size={size}:rate=25"
# name -> (file name, input size, seconds, ffmpeg output arguments). {vf} is a filter chain.
RECIPES: Dict[str, tuple] = {
    "mpeg4_xvid_bframes_avi": ("xvid_bf.avi", "160x120", 3, ["-c:v", "mpeg4", "-bf", "2", "-vtag", "XVID"]),
    "mpeg4_divx_avi": ("divx.avi", "160x120", 2, ["-c:v", "mpeg4", "-vtag", "DIVX", "-g", "12"]),
    "mpeg4_dx50_bframes_avi": ("dx50_bf.avi", "160x120", 2, ["-c:v", "mpeg4", "-bf", "1", "-vtag", "DX50", "-g", "10"]),
    "msmpeg4v2_avi": ("msmpeg4v2.avi", "160x120", 2, ["-c:v", "msmpeg4v2", "-g", "12"]),
    "msmpeg4v3_avi": ("msmpeg4v3.avi", "160x120", 2, ["-c:v", "msmpeg4", "-g", "12"]),
    "mjpeg_avi": ("mjpeg.avi", "160x120", 2, ["-c:v", "mjpeg", "-q:v", "5"]),
    "cinepak_dropped_frames_avi": ("cinepak_vfr.avi", "112x80", 2,  # cinepak encodes slowly: small
                                   ["-vf", "select='not(mod(n\\,7))+gt(mod(n\\,5)\\,2)'", "-fps_mode", "passthrough",
                                    "-c:v", "cinepak"]),
    "avi_without_index": ("noindex.avi", "160x120", 2, ["-c:v", "mpeg4", "-g", "10"]),
    "vp8_webm": ("vp8.webm", "160x120", 2, ["-c:v", "libvpx", "-deadline", "realtime", "-cpu-used", "8", "-b:v", "200k",
                                          "-g", "15"]),
    "vp9_webm": ("vp9.webm", "160x120", 2, ["-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8",
                                            "-b:v", "200k", "-g", "15"]),
    "av1_mp4": ("av1.mp4", "160x120", 2, ["-c:v", "libaom-av1", "-cpu-used", "8", "-usage", "realtime",
                                          "-b:v", "200k", "-g", "15"]),
    "hevc_mp4": ("hevc.mp4", "160x120", 2, ["-c:v", "libx265", "-preset", "ultrafast", "-tag:v", "hvc1",
                                            "-x265-params", "log-level=none:keyint=15"]),
    "h264_bpyramid_open_gop_mp4": ("h264_open_gop.mp4", "160x120", 3,
                                   ["-c:v", "libx264", "-x264-params", "keyint=12:min-keyint=12:scenecut=0:"
                                    "open-gop=1:bframes=3:b-pyramid=normal:b-adapt=0"]),
    "h264_edit_list_mp4": ("edit_list.mp4", "160x120", 3, None),  # stream copy from a non-keyframe: elst
    "rotated_phone_mp4": ("rotated.mp4", "176x144", 2, ["-c:v", "libx264", "-metadata:s:v:0", "rotate=90"]),
    "vfr_mp4": ("vfr.mp4", "160x120", 4, ["-vf", "select='not(mod(n\\,7))+gt(mod(n\\,5)\\,2)'", "-fps_mode",
                                          "passthrough", "-c:v", "libx264", "-g", "15"]),
    "h264_mpegts": ("h264.ts", "160x120", 2, ["-c:v", "libx264", "-g", "15", "-f", "mpegts"]),
    "mpeg2_mpegts": ("mpeg2.ts", "160x120", 2, ["-c:v", "mpeg2video", "-bf", "2", "-g", "12", "-f", "mpegts"]),
    "flv1_flv": ("sorenson.flv", "160x120", 2, ["-c:v", "flv", "-g", "12"]),
    "h263_3gp": ("h263.3gp", "176x144", 2, ["-c:v", "h263", "-g", "12"]),
    "h264_422_mp4": ("yuv422.mp4", "160x120", 2, ["-c:v", "libx264", "-pix_fmt", "yuv422p", "-g", "15"]),
    "h264_10bit_mkv": ("10bit.mkv", "160x120", 2, ["-c:v", "libx264", "-pix_fmt", "yuv420p10le", "-g", "15"]),
    "hevc_10bit_mp4": ("hevc10.mp4", "160x120", 2, ["-c:v", "libx265", "-preset", "ultrafast", "-pix_fmt",
                                                    "yuv420p10le", "-x265-params", "log-level=none:keyint=15"]),
    "qcif_176x144_mp4": ("qcif.mp4", "176x144", 2, ["-c:v", "libx264", "-g", "15"]),
    "portrait_144x176_mp4": ("portrait.mp4", "144x176", 2, ["-c:v", "libx264", "-g", "15"]),
    "odd_width_mjpeg_avi": ("odd.avi", "161x119", 2, ["-c:v", "mjpeg", "-q:v", "5"]),
    "odd_width_h264_444_mp4": ("odd444.mp4", "161x121", 2, ["-c:v", "libx264", "-pix_fmt", "yuv444p", "-g", "15"]),
    "truncated_tail_mp4": ("truncated.mp4", "160x120", 3, ["-c:v", "libx264", "-g", "15", "-movflags", "+faststart"]),
    "truncated_tail_avi": ("truncated.avi", "160x120", 3, ["-c:v", "mpeg4", "-g", "15"]),
    "late_start_mkv": ("late_start.mkv", "160x120", 2, ["-c:v", "libx264", "-g", "15", "-output_ts_offset", "7"]),
    "late_start_mp4": ("late_start.mp4", "160x120", 2, ["-c:v", "libx264", "-g", "15", "-output_ts_offset", "3"]),
}
ENCODERS = {"av1_mp4": "libaom-av1", "hevc_mp4": "libx265", "hevc_10bit_mp4": "libx265", "vp8_webm": "libvpx",
            "vp9_webm": "libvpx-vp9"}


def find_ffmpeg() -> Optional[str]:
    return shutil.which("ffmpeg")


def encoders(ffmpeg: str) -> str:
    return subprocess.run([ffmpeg, "-hide_banner", "-encoders"], capture_output=True, text=True).stdout


def _with_420(args: List[str]) -> List[str]:
    """testsrc is RGB, from which x264/x265/libvpx/libaom would pick 4:4:4: real files are 4:2:0."""
    encoder = args[args.index("-c:v") + 1]
    if encoder.startswith(("libx26", "libvpx", "libaom")) and "-pix_fmt" not in args:
        return [*args, "-pix_fmt", "yuv420p"]
    return args


def _run(ffmpeg: str, args: List[str]) -> None:
    subprocess.run([ffmpeg, "-v", "error", "-y", *args], check=True, stdin=subprocess.DEVNULL)


def make_file(ffmpeg: str, name: str, out_dir: str) -> str:
    """Encode corpus entry `name` into `out_dir`; returns its path."""
    file_name, size, seconds, args = RECIPES[name]
    path = os.path.join(out_dir, file_name)
    source = ["-f", "lavfi", "-i", SRC.format(size=size), "-t", str(seconds)]
    if name == "h264_edit_list_mp4":
        whole = path + ".whole.mp4"
        _run(ffmpeg, [*source, "-c:v", "libx264", "-g", "25", "-pix_fmt", "yuv420p", whole])
        _run(ffmpeg, ["-ss", "0.5", "-i", whole, "-c", "copy", path])  # cut inside a GOP: an edit list
        os.remove(whole)
        return path
    _run(ffmpeg, [*source, *_with_420(args), path])
    if name == "avi_without_index":  # the idx1 chunk renamed to JUNK: readers must scan the movi list
        with open(path, "r+b") as f:
            data = f.read()
            at = data.rindex(b"idx1")
            f.seek(at)
            f.write(b"JUNK")
    if name.startswith("truncated_tail"):  # a download cut off: the last 20% of the bytes missing
        os.truncate(path, int(os.path.getsize(path) * 0.8))
    return path


def make_corpus(out_dir: str, names: Optional[List[str]] = None) -> Dict[str, str]:
    """Encode the corpus (or `names` of it) into `out_dir`: name -> path. An entry whose encoder this
    ffmpeg lacks is left out (see `missing_encoders`)."""
    ffmpeg = find_ffmpeg()
    if ffmpeg is None:
        raise RuntimeError("the quirk corpus needs ffmpeg on PATH (apt-get install ffmpeg)")
    os.makedirs(out_dir, exist_ok=True)
    available = encoders(ffmpeg)
    todo = [name for name in names or RECIPES if name not in ENCODERS or f" {ENCODERS[name]} " in available]
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:  # one ffmpeg process per core
        return dict(zip(todo, pool.map(lambda name: make_file(ffmpeg, name, out_dir), todo)))
