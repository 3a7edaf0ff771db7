"""Spoken prompts: text rendered by espeak-ng, resampled by sox to 8 kHz mono 16-bit WAV (what
PCMA/PCMU carry), cached per (voice, text, repeats) so a text is rendered once.

Invariants: a cached file is written under a temporary name and renamed, so a reader never sees half
a file; one render per key runs at a time; the voice is an espeak-ng voice (`cmn` Mandarin, `yue`
Cantonese), anything else falls back to Mandarin.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
from pathlib import Path

VOICES = {
    "cmn": "cmn",
    "zh": "cmn",
    "zh-cn": "cmn",
    "mandarin": "cmn",
    "yue": "yue",
    "zh-hk": "yue",
    "cantonese": "yue",
}
DEFAULT_VOICE = "cmn"
RATE = 8000


class SpeechError(RuntimeError):
    """espeak-ng or sox is missing or failed."""


def voice_for(language: str | None) -> str:
    """The espeak-ng voice for a roster language (Mandarin when none or unknown)."""
    return VOICES.get((language or "").strip().lower(), DEFAULT_VOICE)


async def _run(*argv: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    _, err = await proc.communicate()
    if proc.returncode != 0:
        raise SpeechError(f"{argv[0]} failed ({proc.returncode}): {err.decode(errors='replace')[-400:]}")


class Speech:
    """Renders and caches prompts in `cache_dir`."""

    def __init__(self, cache_dir: Path, *, speed: int = 150, gap_s: float = 1.0) -> None:
        self.cache_dir = cache_dir
        self.speed = speed
        self.gap_s = gap_s
        self._locks: dict[str, asyncio.Lock] = {}
        for tool in ("espeak-ng", "sox"):
            if shutil.which(tool) is None:
                raise SpeechError(f"{tool} not found (install espeak-ng and sox)")
        cache_dir.mkdir(parents=True, exist_ok=True)

    def path_for(self, text: str, voice: str, repeats: int = 1, tail_s: float = 0.0) -> Path:
        digest = hashlib.sha256(f"{voice}|{self.speed}|{repeats}|{tail_s}|{text}".encode()).hexdigest()[:32]
        return self.cache_dir / f"{voice}-{digest}.wav"

    async def render(self, text: str, language: str | None = None, *, repeats: int = 1, tail_s: float = 0.0) -> Path:
        """The WAV that speaks `text` `repeats` times (a pause between), then `tail_s` of silence."""
        voice = voice_for(language)
        target = self.path_for(text, voice, repeats, tail_s)
        if target.exists():
            return target
        lock = self._locks.setdefault(target.name, asyncio.Lock())
        async with lock:
            if target.exists():
                return target
            once = self.path_for(text, voice)
            if not once.exists():
                raw = once.with_suffix(f".raw{os.getpid()}.wav")
                tmp = once.with_suffix(f".tmp{os.getpid()}.wav")
                await _run("espeak-ng", "-v", voice, "-s", str(self.speed), "-w", str(raw), text)
                await _run("sox", str(raw), "-r", str(RATE), "-c", "1", "-b", "16", str(tmp))
                raw.unlink(missing_ok=True)
                tmp.replace(once)
            if repeats == 1 and tail_s == 0:
                return once
            tmp = target.with_suffix(f".tmp{os.getpid()}.wav")
            parts: list[str] = []
            for n in range(repeats):
                parts.append(str(once))
                if n < repeats - 1:
                    parts.append(str(self._silence(self.gap_s)))
            if tail_s > 0:
                parts.append(str(self._silence(tail_s)))
            await _run("sox", *parts, str(tmp))
            tmp.replace(target)
            return target

    def _silence(self, seconds: float) -> Path:
        path = self.cache_dir / f"silence-{seconds:g}.wav"
        if not path.exists():
            tmp = path.with_suffix(f".tmp{os.getpid()}.wav")
            samples = int(RATE * seconds)
            header = _wav_header(samples)
            tmp.write_bytes(header + b"\x00\x00" * samples)
            tmp.replace(path)
        return path


def _wav_header(samples: int) -> bytes:
    data = samples * 2
    return (
        b"RIFF"
        + (36 + data).to_bytes(4, "little")
        + b"WAVEfmt "
        + (16).to_bytes(4, "little")
        + (1).to_bytes(2, "little")
        + (1).to_bytes(2, "little")
        + RATE.to_bytes(4, "little")
        + (RATE * 2).to_bytes(4, "little")
        + (2).to_bytes(2, "little")
        + (16).to_bytes(2, "little")
        + b"data"
        + data.to_bytes(4, "little")
    )


def wav_seconds(path: Path) -> float:
    """The length of one of our WAVs (8 kHz, 16-bit mono, 44-byte header)."""
    return max(path.stat().st_size - 44, 0) / (2 * RATE)


def silence_wav(path: Path, seconds: float) -> Path:
    """A WAV of silence (what an idle engine's default source plays)."""
    samples = int(RATE * seconds)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_wav_header(samples) + b"\x00\x00" * samples)
    return path
