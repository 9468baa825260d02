"""Video decoding: PyAV (default), decord or torchcodec, one open per sample, errors that name the file.

A reader exposes `num_frames` and `get_frames(indices) -> uint8 [T, C, H, W]` on the CPU. Every
failure (missing, empty, undecodable or truncated file, no frames) raises `VideoError(path, reason)`,
which the dataset turns into a counted, reported, replaced sample.

Frame i means what the official reader (decord) means by it: the i-th frame decoded, in presentation
order, counted from the first; the frame count is the number of frames the stream's packets hold,
never the container header's (an AVI header counts dropped frames). Every backend agrees on the
real-world quirk corpus (tests/test_real_world_corpus.py) except where DATASET.md names a backend's
known failure.

How much each backend decodes for a list of frame indices (BENCHMARKS.md "Decoding less"):
- PyAV (PyAVReader, `DecodeOptions`): opening demuxes every packet (no decoding) for the frames'
  timestamps; one pass over the sorted, distinct indices; unwanted non-reference frames are not
  decoded, keyframes that start a closed GOP are sought to across gaps, only wanted frames are
  converted to RGB, optionally scaled in the same swscale pass.
- decord 0.6 (its src/video/video_reader.cc): opening demuxes every packet to learn the pts and
  the keyframes' positions in decode order. get_batch takes the indices in the order given (an
  unsorted list seeks back) and decodes each distinct one: in the current GOP and ahead, it
  decodes forward and marks the frames in between for discard (not converted to RGB); in another
  GOP, or behind, it seeks to that GOP's keyframe. Every frame in between is decoded. Taking
  decode-order positions for frame indices, it returns the wrong frames after a seek in open-GOP
  files (tests/test_decode_levers.py: frame 36 for 33).
- torchcodec 0.17 (its _core/SingleStreamDecoder.cpp): get_frames_at sorts the indices (an
  argsort) and decodes each distinct one once, in increasing order. Before each it seeks only when
  the target's keyframe (from exact mode's packet scan) differs from the last decoded frame's and
  lies beyond the frames the decoder holds (reorder buffer plus frame threads); only returned
  frames are converted. Every frame in between is decoded.
"""
import bisect
import logging
import math
import os
import re
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple, TypeVar

import numpy as np
import torch

T = TypeVar("T")

logger = logging.getLogger(__name__)

# "torchcodec_cuda" decodes with NVDEC where it can and falls back to torchcodec on the CPU.
BACKENDS = ("decord", "pyav", "torchcodec", "torchcodec_cuda")
# The backends that decode on the CPU (every one but "torchcodec_cuda").
CPU_BACKENDS = ("decord", "pyav", "torchcodec")
# The backends that take DecodeOptions.short_side (scaling in the decoder).
SCALING_BACKENDS = ("pyav", "decord", "torchcodec")
DECORD_MIN_SCALED_WIDTH = 80  # every width from 73 up copied out correctly (DecordReader)
# PyAV: the frames of a full decode on every file of the quirk corpus (where decord's seeks go wrong
# too: DATASET.md "Backends"), less decode CPU per clip on every file measured (BENCHMARKS.md,
# "Video backends"), FFmpeg bundled in its wheel on every platform, maintained.
DEFAULT_BACKEND = "pyav"
# swscale's filter when DecodeOptions.short_side scales in the decoder (BENCHMARKS.md "Decoding less").
SCALE_INTERPOLATION = "BILINEAR"
_CUDA_UNUSABLE = None  # why this process cannot decode "torchcodec_cuda" on CUDA, once known
_FALLBACK_LOGGED = False  # the one CPU-fallback warning of this process was logged
FFMPEG_HELP = ("torchcodec needs FFmpeg's shared libraries (major version 4 to 9): on Debian/Ubuntu "
               "`apt-get install ffmpeg` (or the libavcodec, libavformat, libavutil, libavdevice, libavfilter, "
               "libswscale and libswresample packages), with conda `conda install ffmpeg`")


# How a VideoError's reason starts when the file is fine and only the chosen backend cannot read it.
READER_PROBLEM = "reader problem: "


class VideoError(Exception):
    """`decoder_failed`: a decoder rejected the file (not missing, empty or too short), so
    another backend may still read it."""

    def __init__(self, path: str, reason: str, decoder_failed: bool = False):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason, self.decoder_failed = path, reason, decoder_failed


class DecordReader:
    """Random access through decord's frame index (seeks from the nearest keyframe)."""

    def __init__(self, path: str, num_threads: int = 1, short_side: Optional[int] = None):
        import decord  # imported here: optional where only PyAV is installed

        height, width = -1, -1  # decord's "the source size"
        if short_side:
            # decord scales in its decoder (swscale) to a size given before opening: read it from the
            # header. decord 0.6 fails to copy frames out at some widths below DECORD_MIN_SCALED_WIDTH
            # (2, 3, 4, 6, 8, 12, 16, 24, 48, 72, whatever the source and height): those stay full size.
            scaled_height, scaled_width = _scaled_source_size(path, short_side)
            if scaled_width >= DECORD_MIN_SCALED_WIDTH:
                height, width = scaled_height, scaled_width
        try:
            self._vr = decord.VideoReader(path, num_threads=num_threads, ctx=decord.cpu(0), width=width,
                                          height=height)
        except Exception as e:  # decord raises its own DECORDError and RuntimeError
            raise VideoError(path, f"cannot open ({_first_line(e)})", decoder_failed=True) from None
        self.path = path
        self.num_frames = len(self._vr)

    def get_frames(self, indices: Sequence[int]) -> torch.Tensor:
        try:
            frames = self._vr.get_batch(list(indices)).asnumpy()  # [T, H, W, C]
        except Exception as e:
            raise VideoError(self.path, f"decoding frames {min(indices)}-{max(indices)} failed "
                                        f"({_first_line(e)})", decoder_failed=True) from None
        return torch.from_numpy(frames).permute(0, 3, 1, 2)  # [T, C, H, W]


@dataclass(frozen=True)
class DecodeOptions:
    """How much a reader decodes for a clip (the levers of BENCHMARKS.md "Decoding less").

    skip_nonref and keyframe_seek (PyAV) change only the time: the wanted frames are the same bit
    for bit (tests/test_decode_levers.py). short_side changes pixel values and is off by default.

    skip_nonref: decode the packets of unwanted frames with FFmpeg's skip_frame=NONREF, which drops
        the frames no other frame predicts from (non-reference B-frames); every reference frame is
        still decoded, so the wanted frames are unchanged.
    keyframe_seek: where a keyframe lies between the last frame fed to the decoder and the next
        wanted one, seek to it instead of decoding the frames before it.
    short_side: scale in the decoder (one swscale pass with the RGB conversion) so that the short
        side is this many pixels where the source's is larger; None decodes at the source size.
    convert_every_frame: convert every decoded frame to RGB, not only the wanted ones: the 'off' of
        that lever, for bench/bench_dataloader.py only.
    """
    skip_nonref: bool = True
    keyframe_seek: bool = True
    short_side: Optional[int] = None
    convert_every_frame: bool = False


def _scaled_source_size(path: str, short_side: int) -> Tuple[int, int]:
    """scaled_size of the first video stream, its size read from the container header (PyAV, nothing
    decoded), for the backends that take the output size before they open the file."""
    import av

    try:
        with av.open(path) as container:
            stream = container.streams.video[0]
            return scaled_size(stream.height, stream.width, short_side)
    except Exception as e:
        raise VideoError(path, f"cannot open ({_first_line(e)})", decoder_failed=True) from None


def scaled_size(height: int, width: int, short_side: Optional[int]) -> Tuple[int, int]:
    """(height, width) with the short side scaled down to `short_side` (never up), the long side
    truncated as T.resize_short_side does: int(short_side * long / short)."""
    if not short_side or min(height, width) <= short_side:
        return height, width
    if height <= width:
        return short_side, int(short_side * width / height)
    return int(short_side * height / width), short_side


class _Recount(Exception):
    """A pass met something the packet timeline did not foresee: frame i is then found by counting the
    decoded frames from the first one, as decord numbers them. `for_good`: the timestamps proved
    unable to place frames in this file (a frame or packet at a pts no packet had, a landing
    nowhere else to go), not only a wanted frame the decoder never output (a truncated tail)."""

    def __init__(self, for_good: bool = True):
        super().__init__()
        self.for_good = for_good


@dataclass
class _Timeline:
    """What the packets say, demuxed once at opening (no decoding).

    pts: the timestamps of the stream's packets sorted: frame i is shown at pts[i]. An empty list
        when the packets cannot place their frames (a packet without pts, two with the same pts):
        frames are then only counted.
    keyframes: frame indices of the keyframes that start a closed GOP (no packet after one in decode
        order is shown before it), where decoding can start; sorted.
    """
    count: int
    pts: List[int]
    keyframes: List[int]


def _packet_timeline(container, stream) -> _Timeline:
    """Demux every packet of `stream` (reading, not decoding) into a _Timeline. Empty packets (the
    demuxer's end-of-stream flush) carry no frame, and packets an MP4 edit list hides (the pre-roll
    of a clip cut without re-encoding) are decoded but never shown: neither is counted."""
    stamps, keys = [], []  # in decode order
    for packet in container.demux(stream):
        if packet.size and not packet.is_discard:
            stamps.append(packet.pts)
            keys.append(packet.is_keyframe)
    if not stamps or None in stamps or len(set(stamps)) < len(stamps):
        return _Timeline(len(stamps), [], [])
    order = sorted(stamps)
    rank = {pts: i for i, pts in enumerate(order)}
    keyframes, shown_later = [], math.inf  # the least pts of the packets after position d
    for d in range(len(stamps) - 1, -1, -1):
        if keys[d] and stamps[d] < shown_later:  # nothing decoded after it is shown before it
            keyframes.append(rank[stamps[d]])
        shown_later = min(shown_later, stamps[d])
    return _Timeline(len(stamps), order, sorted(keyframes))


def _decoded(packet) -> list:
    """The frames `packet` completes. A packet the decoder rejects (damaged data, a download cut off
    inside it) gives none, as FFmpeg's command line and decord skip it; its frame is then missing."""
    import av

    try:
        return packet.decode()
    except av.error.InvalidDataError:
        return []


class PyAVReader:
    """PyAV (FFmpeg) decoding, numbering frames as decord does: frame i is the i-th frame in
    presentation order, the count is the number of frames the packets hold.

    Opening demuxes every packet (no decoding, as decord and torchcodec's exact mode do) and never
    trusts the container header's count (an AVI header counts dropped frames, an MPEG-4 Part 2 AVI
    with B-frames starts at pts 1). The sorted packet timestamps are the frames' timestamps: a
    decoded frame's index is its pts's rank, known before decoding from its packet's pts. That lets
    `DecodeOptions` save work: unwanted non-reference frames are not decoded (skip_nonref), a
    keyframe that starts a closed GOP between two wanted frames is sought to instead of decoded up to
    (keyframe_seek), and only the wanted frames are converted to RGB. Where the timestamps cannot
    place frames (missing or repeated pts), or a pass meets a frame the timeline did not foresee,
    the frames are counted from the first one, every frame decoded: the definition itself.

    `header_frames` keeps the container's own count (0 where it has none) for the dataset doctor.
    """

    def __init__(self, path: str, num_threads: int = 1, options: DecodeOptions = DecodeOptions()):
        import av

        self.path, self.options, self._threads = path, options, num_threads
        try:
            self._container = av.open(path)
            self._stream = self._container.streams.video[0]
            self._stream.thread_type, self._stream.thread_count = "AUTO", num_threads
            self.header_frames = self._stream.frames
            self._timeline = _packet_timeline(self._container, self._stream)
            self._rewind()
        except Exception as e:
            raise VideoError(path, f"cannot open ({_first_line(e)})", decoder_failed=True) from None
        self.num_frames = self._timeline.count
        self._rank = {pts: i for i, pts in enumerate(self._timeline.pts)}
        self._height, self._width = scaled_size(self._stream.height, self._stream.width, options.short_side)
        self._reformatter = av.video.reformatter.VideoReformatter()  # one swscale context for every frame
        self._closed = set(self._timeline.keyframes)
        self._seeks = bool(self._timeline.pts)  # off once a seek lands somewhere unforeseen
        self.frames_decoded = 0  # frames the decoder returned since opening (what the levers save)

    def _rewind(self) -> None:
        """Back to the first packet, decoder flushed; a stream that cannot seek (raw H.264) is opened again."""
        import av

        try:
            self._container.seek(0, backward=True, stream=self._stream)
        except av.error.FFmpegError:
            self._container.close()
            self._container = av.open(self.path)
            self._stream = self._container.streams.video[0]
            self._stream.thread_type, self._stream.thread_count = "AUTO", self._threads

    def _keyframe_before(self, index: int) -> int:
        """The last closed-GOP keyframe at or before frame `index`, else -1."""
        keyframes = self._timeline.keyframes
        position = bisect.bisect_right(keyframes, index) - 1
        return keyframes[position] if position >= 0 else -1

    def _seek_to(self, keyframe: int) -> None:
        """To keyframe `keyframe` (0: the first packet); flushes the decoder."""
        if keyframe <= 0:
            self._rewind()
        else:
            self._container.seek(self._timeline.pts[keyframe], backward=True, any_frame=False, stream=self._stream)

    def get_frames(self, indices: Sequence[int]) -> torch.Tensor:
        wanted = sorted(set(int(i) for i in indices))
        past_end = [i for i in wanted if i < 0 or i >= self.num_frames]
        if past_end:
            raise VideoError(self.path, f"stream ends before frame {past_end[0]} of {self.num_frames}",
                             decoder_failed=True)
        try:
            try:
                if not self._timeline.pts:
                    raise _Recount
                found = self._decode_by_timestamps(wanted)
            except _Recount as recount:
                if recount.for_good:
                    self._timeline.pts.clear()
                    self._rank = {}
                found = self._decode_counting(wanted)
        except Exception as e:
            raise VideoError(self.path, f"decoding frames {wanted[0]}-{wanted[-1]} failed ({_first_line(e)})",
                             decoder_failed=True) from None
        return self._stack(found, indices)

    def _decode_by_timestamps(self, wanted: List[int]) -> Dict[int, np.ndarray]:
        """The wanted frames (sorted, unique), each placed by its pts: one pass per seek."""
        found: Dict[int, np.ndarray] = {}
        target = max(0, self._keyframe_before(wanted[0])) if self._seeks and self.options.keyframe_seek else 0
        while target is not None:
            self._seek_to(target)
            target = self._decode_pass(wanted, found, target)
        if len(found) < len(wanted):  # a frame the packets promised was never output
            raise _Recount(for_good=False)
        return found

    def _decode_pass(self, wanted: List[int], found: Dict[int, np.ndarray], start: int) -> Optional[int]:
        """Decode forward from keyframe `start` (just sought to), adding wanted frames to `found`.
        Returns the keyframe to seek to next, or None when done or at the end of the stream."""
        context, options = self._stream.codec_context, self.options
        skip = "DEFAULT"
        context.skip_frame = skip
        wanted_set = set(wanted)
        pending = 0  # wanted[pending] is the first wanted frame not found yet
        while pending < len(wanted) and wanted[pending] in found:
            pending += 1
        fed = -1  # highest frame index fed to the decoder in this pass
        for packet in self._container.demux(self._stream):
            if not packet.size:  # the end-of-stream flush: drains the frames the decoder holds
                self._take(packet, wanted_set, found)
                return None
            if packet.is_discard:  # an edit list's hidden pre-roll: a reference, shown never
                self._take(packet, wanted_set, found)
                continue
            index = self._rank.get(packet.pts)
            if index is None:
                raise _Recount
            if fed < 0 and start > 0 and index != start:  # the seek landed elsewhere: no more seeks here
                self._seeks = False
                if index > start or index not in self._closed:  # past it, or not a start: from the first packet
                    return 0
            if options.keyframe_seek and self._seeks and fed >= 0:
                keyframe = self._keyframe_before(wanted[pending])
                # Every wanted frame before it is found (none was fed but not yet output), and
                # decoding up to it would decode frames nobody needs.
                if keyframe > max(fed, index):
                    return keyframe
            needed = index in wanted_set and index not in found
            want = "DEFAULT" if needed or not options.skip_nonref else "NONREF"
            if want != skip:
                context.skip_frame = skip = want
            self._take(packet, wanted_set, found)
            fed = max(fed, index)
            while pending < len(wanted) and wanted[pending] in found:
                pending += 1
            if pending == len(wanted):
                return None
        return None

    def _take(self, packet, wanted_set: set, found: Dict[int, np.ndarray]) -> None:
        """Decode `packet`; the frames it completes that are wanted go to `found`, placed by pts."""
        for frame in _decoded(packet):
            self.frames_decoded += 1
            frame_index = self._rank.get(frame.pts)
            if frame_index is None:
                raise _Recount
            if frame_index in wanted_set and frame_index not in found:
                found[frame_index] = self._rgb(frame)
            elif self.options.convert_every_frame:
                self._rgb(frame)

    def _decode_counting(self, wanted: List[int]) -> Dict[int, np.ndarray]:
        """Frame i = the i-th frame the decoder outputs from the first packet, every frame decoded."""
        self._rewind()
        self._stream.codec_context.skip_frame = "DEFAULT"
        wanted_set, found, index = set(wanted), {}, 0
        for packet in self._container.demux(self._stream):
            for frame in _decoded(packet):
                self.frames_decoded += 1
                if index in wanted_set:
                    found[index] = self._rgb(frame)
                if index >= wanted[-1]:
                    return found
                index += 1
        return found

    def _rgb(self, frame) -> np.ndarray:
        """uint8 [H, W, 3]; scaled in the same swscale pass when options.short_side asks for it.

        Through the reader's one VideoReformatter, on the reader's threads: frame.to_ndarray(format=...)
        makes a new reformatter per frame, whose swscale context (with a thread pool as large as the
        machine: PyAV's default threads=0) is set up again each time. 0.16 against 0.03 ms CPU per
        320x240 frame here, the same pixels (tests/test_decode_levers.py)."""
        size = {} if (self._height, self._width) == (frame.height, frame.width) else {
            "width": self._width, "height": self._height, "interpolation": SCALE_INTERPOLATION}
        return self._reformatter.reformat(frame, format="rgb24", threads=self._threads, **size).to_ndarray()

    def _stack(self, found: dict, indices: Sequence[int]) -> torch.Tensor:
        missing = sorted(set(indices) - set(found))
        if missing:
            raise VideoError(self.path, f"stream ends before frame {missing[0]} of {self.num_frames}",
                             decoder_failed=True)
        frames = np.stack([found[i] for i in indices])  # [T, H, W, C]
        return torch.from_numpy(frames).permute(0, 3, 1, 2)

    def __del__(self):
        container = getattr(self, "_container", None)
        if container is not None:
            container.close()


class TorchCodecReader:
    """torchcodec decoding (PyTorch's decoder over the machine's FFmpeg libraries).

    Exact seek mode: opening scans the packet index (demuxing only, no decoding; about 1.6 ms more
    than approximate mode on a 300-frame 320x240 clip), so `num_frames` counts the frames that
    really exist and frame i is the i-th in presentation order, as decord and PyAV index.
    Approximate mode takes the count from the container header or duration x frame rate instead,
    which is wrong for a stream that starts late (measured: 280 for a 30-frame stream starting at
    10 s) or has an edit list (60 for the 35 frames shown): sampled indices would point past the
    end. Its frames are otherwise the same, but our sampling needs the count. Frames come out at
    full size unless `short_side` asks for decoder-side scaling (opt-in, DecodeOptions.short_side):
    torchcodec's Resize (swscale bilinear, antialiased) matches neither the cv2-exact short-side
    resize of validation (max abs difference 14 at 320x240 -> 224) nor torchvision's antialiased
    square resize (1), and the crops are drawn after decoding, per view.

    `device="cuda"` decodes on NVDEC and copies the uint8 frames back to the CPU, where the rest of
    the pipeline runs. Where CUDA cannot be used (no GPU, a CPU-only torchcodec build, a forked
    DataLoader worker of a process that already uses CUDA) it decodes on the CPU and logs one
    warning per process.
    """

    def __init__(self, path: str, num_threads: int = 1, device: str = "cpu", short_side: Optional[int] = None):
        decoder_class = _torchcodec_decoder_class()
        self.path = path
        self.device = _usable_device(device)
        scale = {}
        if short_side:
            size = _scaled_source_size(path, short_side)
            scale = {"transforms": [_torchcodec_resize(size)]}

        def create(on: str):
            return decoder_class(path, num_ffmpeg_threads=num_threads, device=on, seek_mode="exact",
                                 dimension_order="NCHW", **scale)

        try:
            self._decoder = create(self.device)
        except Exception as e:
            if self.device == "cpu":
                raise VideoError(path, f"cannot open ({_torchcodec_reason(e)})", decoder_failed=True) from None
            self._decoder = self._cpu_after_cuda_failure(create, e)
        self.num_frames = len(self._decoder)

    def _cpu_after_cuda_failure(self, create, cuda_error: Exception):
        """A file the CPU decoder also rejects is a bad file; otherwise CUDA decoding is unusable here."""
        try:
            decoder = create("cpu")
        except Exception as e:
            raise VideoError(self.path, f"cannot open ({_torchcodec_reason(e)})", decoder_failed=True) from None
        _disable_cuda(f"torchcodec cannot decode on CUDA here ({_torchcodec_reason(cuda_error)})")
        self.device = "cpu"
        return decoder

    def get_frames(self, indices: Sequence[int]) -> torch.Tensor:
        indices = [int(i) for i in indices]
        past_end = [i for i in indices if i >= self.num_frames]
        if past_end:
            raise VideoError(self.path, f"stream ends before frame {min(past_end)} of {self.num_frames}",
                             decoder_failed=True)
        try:
            frames = self._decoder.get_frames_at(indices).data  # uint8 [T, C, H, W], on self.device
        except Exception as e:
            raise VideoError(self.path, f"decoding frames {min(indices)}-{max(indices)} failed "
                                        f"({_torchcodec_reason(e)})", decoder_failed=True) from None
        fallback = getattr(self._decoder, "cpu_fallback", None)  # absent in older torchcodec releases
        if self.device != "cpu" and fallback:  # NVDEC lacks this codec: torchcodec decoded on the CPU
            _log_cpu_fallback(f"NVDEC cannot decode {self.path} ({fallback})")
        return frames.cpu()


def _torchcodec_resize(size: Tuple[int, int]):
    """torchcodec's decoder-side Resize to (height, width), or a clear error where the installed
    torchcodec has none (decoder transforms came with torchcodec 0.9)."""
    try:
        from torchcodec.transforms import Resize
    except ImportError:
        import torchcodec
        raise RuntimeError(f"decoder-side scaling with the torchcodec backend needs torchcodec >= 0.9 (decoder "
                           f"transforms); this is {getattr(torchcodec, '__version__', 'an older release')}. "
                           f"Use --video_backend pyav, or leave --decode_short_side out") from None
    return Resize(size)


def _usable_device(device: str) -> str:
    """`device`, or "cpu" when this process cannot decode on CUDA."""
    if device == "cpu" or _CUDA_UNUSABLE is not None:
        return "cpu"
    if not torch.cuda.is_available():
        _disable_cuda("no CUDA device is available")
    elif torch.cuda._is_in_bad_fork():  # CUDA cannot start in a child forked after the parent used it
        _disable_cuda("this DataLoader worker was forked from a process that already uses CUDA")
    return "cpu" if _CUDA_UNUSABLE is not None else device


def _disable_cuda(reason: str) -> None:
    global _CUDA_UNUSABLE
    _CUDA_UNUSABLE = reason
    _log_cpu_fallback(reason)


def _log_cpu_fallback(reason: str) -> None:
    global _FALLBACK_LOGGED
    if not _FALLBACK_LOGGED:
        _FALLBACK_LOGGED = True
        logger.warning("video backend torchcodec_cuda: %s; decoding on the CPU (logged once per process, pid %d)",
                       reason, os.getpid())


def _torchcodec_decoder_class():
    """torchcodec's VideoDecoder, or ImportError saying what to install and what failed to load."""
    try:
        import torchcodec
        from torchcodec.decoders import VideoDecoder
    except Exception as e:  # ImportError when absent; OSError/RuntimeError when built for another torch
        raise ImportError(f"video backend torchcodec needs the torchcodec package: `pip install torchcodec`, "
                          f"a release built for the installed torch {torch.__version__} (torchcodec's "
                          f"compatibility table); {FFMPEG_HELP}. Import failed: {_first_line(e)}") from None
    if getattr(torchcodec, "ffmpeg_major_version", 0) is None:  # it loaded, its FFmpeg-linked core did not
        raise ImportError(f"{FFMPEG_HELP}. torchcodec found none it can load: {_ffmpeg_load_errors(VideoDecoder)}")
    return VideoDecoder


def _ffmpeg_load_errors(decoder_class) -> str:
    """The exception torchcodec kept from trying each of its FFmpeg 4-9 cores, grouped by message."""
    try:
        decoder_class(b"")  # without FFmpeg every decoder entry point re-raises the load failure
    except Exception as e:
        by_error, version, last = {}, None, None
        for line in [line.strip() for line in str(e).splitlines()] + ["FFmpeg version end:"]:
            if line.startswith(("FFmpeg version", "[end of")):
                if version is not None and last:
                    by_error.setdefault(last, []).append(version)
                version, last = line[len("FFmpeg version "):].rstrip(":"), None
            elif line:
                last = line
        summary = "; ".join(f"FFmpeg {', '.join(v)}: {error}" for error, v in by_error.items())
        return summary[:600] or _first_line(e)
    return "no error reported"


def _torchcodec_reason(e: Exception) -> str:
    """torchcodec's message without its C++ source location ("SingleStreamDecoder, /src/...cpp:41, ")."""
    text = " ".join(str(e).split())
    return re.sub(r"^.*?\.(?:cpp|h):\d+,\s*", "", text)[:200] or type(e).__name__


def open_video(path: str, backend: str = DEFAULT_BACKEND, num_threads: int = 1,
               options: DecodeOptions = DecodeOptions()):
    """Open `path` with `backend` (one of BACKENDS); missing and empty files fail before any decoder sees them.

    `options` steer PyAV's decoding; decord and torchcodec already skip work on their own (module
    docstring) and take only options.short_side (in their decoders, the size read from the header
    first); torchcodec_cuda does not (NVDEC with decoder transforms is not checked on a GPU yet)."""
    if options.short_side and backend not in SCALING_BACKENDS:
        raise ValueError(f"decoder-side scaling (short side {options.short_side}) needs one of the video "
                         f"backends {SCALING_BACKENDS}, not {backend!r}")
    if not os.path.exists(path):
        raise VideoError(path, "missing")
    if os.path.getsize(path) == 0:
        raise VideoError(path, "empty file")
    if backend == "decord":
        reader = DecordReader(path, num_threads, options.short_side)
    elif backend == "pyav":
        reader = PyAVReader(path, num_threads, options)
    elif backend in ("torchcodec", "torchcodec_cuda"):
        reader = TorchCodecReader(path, num_threads, device="cuda" if backend == "torchcodec_cuda" else "cpu",
                                  short_side=options.short_side)
    else:
        raise ValueError(f"unknown video backend {backend!r}; choose from {BACKENDS}")
    if reader.num_frames <= 0:
        raise VideoError(path, "no frames")
    return reader


def read_video(path: str, backend: str, read: Callable[..., T], num_threads: int = 1,
               options: DecodeOptions = DecodeOptions()) -> T:
    """`read(reader)` of `path` opened with `backend`. decord rejects some files FFmpeg proper reads
    (odd containers, broken indexes): such a file is read again with PyAV, and when that fails too
    the VideoError names both reasons. A file another backend's decoder rejects but decord reads is
    a reader problem, not a broken file: its reason starts with READER_PROBLEM and names decord."""
    try:
        return read(open_video(path, backend, num_threads, options))
    except VideoError as e:
        if not e.decoder_failed:
            raise
        if backend != "decord":
            if _decord_reads(path):
                raise VideoError(path, f"{READER_PROBLEM}the {backend} reader fails ({e.reason}) but decord reads "
                                       f"the file: use --video_backend decord") from None
            raise
        try:
            return read(open_video(path, "pyav", num_threads, options))
        except VideoError as fallback:
            raise VideoError(path, f"{e.reason}; PyAV: {fallback.reason}") from None


def _decord_reads(path: str) -> bool:
    """Whether decord (where installed) opens `path` and decodes its first and last frames."""
    try:
        reader = open_video(path, "decord")
        reader.get_frames([0, reader.num_frames - 1])
        return True
    except (ImportError, VideoError):
        return False


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else type(e).__name__
