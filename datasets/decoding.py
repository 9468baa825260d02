"""Video decoding: PyAV (default), decord or torchcodec, one open per sample, errors that name the file.

A reader exposes `num_frames` and `get_frames(indices) -> uint8 [T, C, H, W]` on the CPU. Every
failure (missing, empty, undecodable or truncated file, no frames) raises `VideoError(path, reason)`,
which the dataset turns into a counted, reported, replaced sample.

How much each backend decodes for a list of frame indices (BENCHMARKS.md "Decoding less"):
- PyAV (PyAVReader, `DecodeOptions`): one pass over the sorted, distinct indices; unwanted
  non-reference frames are not decoded, keyframes the container index shows are sought to across
  gaps, only wanted frames are converted to RGB, optionally scaled in the same swscale pass.
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
# The backends that take DecodeOptions.short_side (scaling in the decoder).
SCALING_BACKENDS = ("pyav", "decord", "torchcodec")
DECORD_MIN_SCALED_WIDTH = 80  # every width from 73 up copied out correctly (DecordReader)
# PyAV: the same frames as decord (tested), less decode CPU per clip on every file measured
# (BENCHMARKS.md, "Video backends"), FFmpeg bundled in its wheel on every platform, maintained.
DEFAULT_BACKEND = "pyav"
# swscale's filter when DecodeOptions.short_side scales in the decoder (BENCHMARKS.md "Decoding less").
SCALE_INTERPOLATION = "BILINEAR"
_CUDA_UNUSABLE = None  # why this process cannot decode "torchcodec_cuda" on CUDA, once known
_FALLBACK_LOGGED = False  # the one CPU-fallback warning of this process was logged
FFMPEG_HELP = ("torchcodec needs FFmpeg's shared libraries (major version 4 to 9): on Debian/Ubuntu "
               "`apt-get install ffmpeg` (or the libavcodec, libavformat, libavutil, libavdevice, libavfilter, "
               "libswscale and libswresample packages), with conda `conda install ffmpeg`")


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


class _FromStart(Exception):
    """The stream cannot be read by timestamps (frames without pts, a raw stream that cannot seek):
    frame indices are known only by counting from the start."""


class _Irregular(Exception):
    """Timestamps off the frame-rate grid, two packets on one frame index, or an index no packet
    has (variable frame rate, dropped frames): frame i is then the i-th frame, counted."""


class PyAVReader:
    """PyAV (FFmpeg) decoding: more forgiving of odd files than decord, and it decodes less.

    The frame count comes from the container, or from counting packets (no decoding) when the
    container does not store it. Frame index = (pts - start) x frame rate. Reading seeks
    to the keyframe before the first wanted frame and walks the packets in decode order; a
    packet's frame index is known from its pts before it is decoded, which lets `DecodeOptions`
    save work: unwanted non-reference frames are not decoded (skip_nonref), a keyframe between two
    wanted frames is sought to instead of decoded up to (keyframe_seek), and only the wanted frames
    are converted to RGB. Streams without timestamps, or that cannot seek, are decoded from the start.

    Keyframe positions come from the container's index, without reading the file: in an index of
    every packet (mp4, avi) a keyframe's frame index is its position in decode order, which holds
    for closed GOPs (every frame decoded before the keyframe is shown before it); Matroska cues
    give the keyframes' pts. Each such seek checks the keyframe it lands on; a position that proves
    wrong turns keyframe seeking off for the file (decoding then runs through, as without it).
    Where the index has neither, decoding runs through from the first seek. Timestamps off the
    frame-rate grid, or with gaps or repeats (variable frame rate), fall back to counting frames
    from the keyframe before the first wanted one (placed by its pts), every frame decoded.
    """

    def __init__(self, path: str, num_threads: int = 1, options: DecodeOptions = DecodeOptions()):
        import av

        self.path, self.options = path, options
        try:
            self._container = av.open(path)
            self._stream = self._container.streams.video[0]
            self._stream.thread_type = "AUTO"
            self._stream.thread_count = num_threads
            self.num_frames = self._stream.frames or self._count_packets()
        except Exception as e:
            raise VideoError(path, f"cannot open ({_first_line(e)})", decoder_failed=True) from None
        rate, start = self._stream.average_rate, self._stream.start_time
        self._pts_per_frame = (1 / (rate * self._stream.time_base)) if rate and self._stream.time_base else None
        # Per packet and frame: a float, not the Fraction (Fraction arithmetic cost ~1 ms per clip).
        self._frames_per_pts = float(1 / self._pts_per_frame) if self._pts_per_frame else None
        self._start_pts = start or 0
        self._height, self._width = scaled_size(self._stream.height, self._stream.width, options.short_side)
        self._keyframes: Optional[List[int]] = None  # frame indices of the keyframes, read when first needed
        self._reformatter = av.video.reformatter.VideoReformatter()  # one swscale context for every frame
        self._threads = num_threads
        self.frames_decoded = 0  # frames the decoder returned since opening (what the levers save)

    def _count_packets(self) -> int:
        count = sum(1 for packet in self._container.demux(self._stream) if packet.size)
        self._rewind()
        return count

    def _rewind(self) -> None:
        """Back to the first packet; a stream that cannot seek (raw H.264) is opened again."""
        import av

        try:
            self._container.seek(0)
        except av.error.FFmpegError:
            threads = self._stream.thread_count
            self._container.close()
            self._container = av.open(self.path)
            self._stream = self._container.streams.video[0]
            self._stream.thread_type, self._stream.thread_count = "AUTO", threads

    def _index(self, pts: Optional[int]) -> Optional[int]:
        if pts is None or self._frames_per_pts is None:
            return None
        return round((pts - self._start_pts) * self._frames_per_pts)

    def _packet_index(self, pts: Optional[int], seen: set) -> Optional[int]:
        """A packet's frame index, added to `seen`; _Irregular if its pts lies off the frame-rate
        grid (by more than a quarter frame) or another packet in `seen` had that index."""
        if pts is None:
            return None
        position = (pts - self._start_pts) * self._frames_per_pts
        index = round(position)
        if abs(position - index) > 0.25 or index in seen:
            raise _Irregular
        seen.add(index)
        return index

    def _keyframe_before(self, index: int) -> int:
        """The last keyframe at or before frame `index` that the container index shows, else -1."""
        if self._keyframes is None:
            entries = self._stream.index_entries
            if len(entries) == self.num_frames:  # every packet, in decode order
                self._keyframes = [i for i, entry in enumerate(entries) if entry.is_keyframe]
            elif len(entries) and all(entry.is_keyframe for entry in entries):  # keyframe pts (cues)
                self._keyframes = sorted(self._index(entry.timestamp) for entry in entries)
            else:
                self._keyframes = []
        position = bisect.bisect_right(self._keyframes, index) - 1
        return self._keyframes[position] if position >= 0 else -1

    def _seek(self, index: int) -> None:
        """To the keyframe at or before frame `index` (the demuxer's choice); flushes the decoder."""
        import av

        if index <= 0:
            self._rewind()
            return
        try:
            self._container.seek(self._start_pts + int(index * self._pts_per_frame), backward=True,
                                 any_frame=False, stream=self._stream)
        except av.error.FFmpegError:
            raise _FromStart from None

    def get_frames(self, indices: Sequence[int]) -> torch.Tensor:
        wanted = sorted(set(indices))
        try:
            if self._pts_per_frame is None:
                raise _FromStart
            try:
                found = self._decode_by_timestamps(wanted)
            except _Irregular:
                found = self._decode_counting(wanted)
        except _FromStart:
            self._rewind()
            return self._decode_from_start(indices)
        except Exception as e:
            raise VideoError(self.path, f"decoding frames {wanted[0]}-{wanted[-1]} failed ({_first_line(e)})",
                             decoder_failed=True) from None
        return self._stack(found, indices)

    def _decode_by_timestamps(self, wanted: List[int]) -> Dict[int, np.ndarray]:
        """The wanted frames (sorted, unique), each packet placed by its pts: one pass per seek."""
        found: Dict[int, np.ndarray] = {}
        target, aimed, last_seen = wanted[0], None, [-1]
        while target is not None:
            self._seek(target)
            target = self._decode_pass(wanted, found, aimed, target > 0, last_seen)
            aimed = target
        missing = [i for i in wanted if i not in found]
        if missing and last_seen[0] > missing[0]:  # the stream went past an index no packet had
            raise _Irregular
        return found

    def _decode_counting(self, wanted: List[int]) -> Dict[int, np.ndarray]:
        """Irregular timestamps: from the keyframe before the first wanted frame (placed by its pts),
        every frame decoded and counted, none skipped."""
        self._stream.codec_context.skip_frame = "DEFAULT"
        self._seek(wanted[0])
        wanted_set, found, position = set(wanted), {}, None  # position: index of the next frame
        for frame in self._container.decode(self._stream):
            self.frames_decoded += 1
            index = self._index(frame.pts) if position is None else position
            if index is None:
                raise _FromStart
            if index in wanted_set:
                found[index] = self._rgb(frame)
            if index >= wanted[-1]:
                break
            position = index + 1
        return found

    def _decode_pass(self, wanted: List[int], found: Dict[int, np.ndarray], aimed: Optional[int],
                     check_landing: bool, last_seen: List[int]) -> Optional[int]:
        """Decode forward from the position a seek left, adding wanted frames (sorted, unique) to
        `found`. Returns the frame to seek to next (a keyframe; 0: start over), or None when done or
        at the end of the stream. `aimed`: the keyframe this pass's seek aimed at, if any;
        `last_seen[0]`: the highest packet index met so far, updated.

        check_landing: the demuxer seeks by timestamps, and in some files (open GOPs, where frames
        decoded after a keyframe are shown before it) it lands on a keyframe shown after the frame
        asked for. Decoding from there would miss that frame or return a broken one, so the pass
        starts over from the first frame instead."""
        context, options = self._stream.codec_context, self.options
        skip = "DEFAULT"
        context.skip_frame = skip
        wanted_set = set(wanted)
        pending = 0  # wanted[pending] is the first wanted frame not found yet
        while pending < len(wanted) and wanted[pending] in found:
            pending += 1
        fed = -1  # highest frame index fed to the decoder in this pass
        indices_fed = set()
        for packet in self._container.demux(self._stream):
            index = self._packet_index(packet.pts, indices_fed)
            if check_landing and packet.size:
                check_landing = False
                if aimed is not None and index != aimed:
                    self._keyframes = []  # the container index misled us: no more keyframe seeks here
                if index is None or index > wanted[pending] or not packet.is_keyframe:
                    return 0
            if options.keyframe_seek and index is not None and fed >= 0:
                keyframe = self._keyframe_before(wanted[pending])
                # Every wanted frame before it is found (none was fed but not yet output), and
                # decoding up to it would decode frames nobody needs.
                if keyframe > max(fed, index):
                    return keyframe
            needed = index is None or (index in wanted_set and index not in found)
            want = "DEFAULT" if needed or not options.skip_nonref else "NONREF"
            if want != skip:
                context.skip_frame = skip = want
            for frame in packet.decode():
                self.frames_decoded += 1
                frame_index = self._index(frame.pts)
                if frame_index is None:
                    raise _FromStart
                if frame_index in wanted_set and frame_index not in found:
                    found[frame_index] = self._rgb(frame)
                elif options.convert_every_frame:
                    self._rgb(frame)
            if index is not None:
                fed = max(fed, index)
                last_seen[0] = max(last_seen[0], index)
            while pending < len(wanted) and wanted[pending] in found:
                pending += 1
            if pending == len(wanted):
                return None
        return None

    def _rgb(self, frame) -> np.ndarray:
        """uint8 [H, W, 3]; scaled in the same swscale pass when options.short_side asks for it.

        Through the reader's one VideoReformatter, on the reader's threads: frame.to_ndarray(format=...)
        makes a new reformatter per frame, whose swscale context (with a thread pool as large as the
        machine: PyAV's default threads=0) is set up again each time. 0.16 against 0.03 ms CPU per
        320x240 frame here, the same pixels (tests/test_decode_levers.py)."""
        size = {} if (self._height, self._width) == (frame.height, frame.width) else {
            "width": self._width, "height": self._height, "interpolation": SCALE_INTERPOLATION}
        return self._reformatter.reformat(frame, format="rgb24", threads=self._threads, **size).to_ndarray()

    def _decode_from_start(self, indices: Sequence[int]) -> torch.Tensor:
        wanted, last, found = set(indices), max(indices), {}
        try:
            for index, frame in enumerate(self._container.decode(self._stream)):
                self.frames_decoded += 1
                if index in wanted:
                    found[index] = self._rgb(frame)
                if index >= last:
                    break
        except Exception as e:
            raise VideoError(self.path, f"decoding failed ({_first_line(e)})", decoder_failed=True) from None
        return self._stack(found, indices)

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
    the VideoError names both reasons."""
    try:
        return read(open_video(path, backend, num_threads, options))
    except VideoError as e:
        if backend != "decord" or not e.decoder_failed:
            raise
        try:
            return read(open_video(path, "pyav", num_threads, options))
        except VideoError as fallback:
            raise VideoError(path, f"{e.reason}; PyAV: {fallback.reason}") from None


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else type(e).__name__
