"""PySceneDetect's PyAV stream over a container the ingest opened itself.

`VideoStreamAv` opens its input with `av.open(file)` and no format, so FFmpeg guesses the
demuxer from the bytes and an `ffconcat` script or a playlist named `.mp4` reads other files
(see containers.py). This stream takes an open container instead; `scenes.detect` imports
it only when it runs (it imports PySceneDetect).
"""

from __future__ import annotations

from scenedetect.backends.pyav import VideoStreamAv
from scenedetect.common import framerate_to_fraction
from scenedetect.video_stream import FrameRateUnavailable


class ContainerStream(VideoStreamAv):
    def __init__(self, container, name: str) -> None:
        # Not super().__init__(), which would open the file again with the format guessed:
        # the state below is what it sets (scenedetect-headless 0.7.2, pinned in constraints.txt).
        self._name, self._path, self._io, self._owns_io = name, "", None, False
        self._frame = self._decoder = None
        self._reopened = True  # no threading mode: never reopened at the end of the stream
        self._decode_failures, self._warning_displayed = 0, False
        self._container = container
        rate = self._video_stream.guessed_rate
        if not rate:
            raise FrameRateUnavailable()
        self._frame_rate = framerate_to_fraction(rate)
        self._duration_frames = self._get_duration()

    @property
    def is_seekable(self) -> bool:
        return True  # a container over a regular file (the parent asks its own file object)

    def reset(self) -> None:
        """The parent reopens the file (format guessed); seeking to the start is the same."""
        self.seek(0)
