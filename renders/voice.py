"""Voices that speak narration into WAV files: eSpeak NG, always there (libespeak-ng and its data
come in the espeakng-loader wheel), and Kokoro when `kokoro_onnx` is installed and its model files
are in the voices folder. Nothing is downloaded.

Both speak in a child process: libespeak-ng keeps global state and is not thread-safe, and a crash
in a C library (a segfault in espeak or onnxruntime) must fail one export, not the worker running
it. This file is also that child's script (`python -P voice.py`, a JSON request on stdin), so it
imports only the standard library at module level.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Any

KOKORO_FILES = ("kokoro-v1.0.onnx", "voices-v1.0.bin")
# Kokoro voice names start with a letter for their language (af_heart: American English); eSpeak
# speaks the same language when Kokoro cannot.
KOKORO_LANGUAGES = {
    "a": ("en-us", "en-us"),
    "b": ("en-gb", "en-gb"),
    "e": ("es", "es"),
    "f": ("fr-fr", "fr"),
    "h": ("hi", "hi"),
    "i": ("it", "it"),
    "j": ("ja", "ja"),
    "p": ("pt-br", "pt-br"),
    "z": ("cmn", "cmn"),
}  # first letter -> (Kokoro's lang, eSpeak's voice)


class VoiceError(RuntimeError):
    """A voice could not speak; the message says which and why."""


@dataclass(frozen=True)
class Voice:
    engine: str  # "espeak" or "kokoro"
    name: str  # an eSpeak voice ("en", "en-us", "fr") or a Kokoro voice ("af_heart")
    models: Path | None = None  # Kokoro's model files

    @property
    def key(self) -> str:
        """What names this voice in cache keys and messages."""
        return f"{self.engine}:{self.name}"

    def speak(self, items: list[tuple[str, Path]]) -> None:
        """Speak each text into its WAV file (16-bit mono), all in one child process. Raises
        VoiceError when the child fails or crashes; files it finished may be left."""
        if not items:
            return
        request = {
            "engine": self.engine,
            "name": self.name,
            "models": str(self.models) if self.models else None,
            "items": [[text, str(path)] for text, path in items],
        }
        characters = sum(len(text) for text, _ in items)
        # Kokoro on a CPU speaks a few times faster than real time; eSpeak a hundred times.
        timeout = 60 + characters * (0.2 if self.engine == "kokoro" else 0.01)
        try:
            done = subprocess.run(
                [sys.executable, "-P", str(Path(__file__).resolve())],
                input=json.dumps(request).encode(),
                capture_output=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as e:
            raise VoiceError(f"the voice {self.key} took longer than {timeout:.0f} s") from e
        if done.returncode < 0:
            raise VoiceError(f"the voice {self.key} crashed (signal {-done.returncode})")
        if done.returncode != 0:
            lines = done.stderr.decode(errors="replace").strip().splitlines() or ["no message"]
            raise VoiceError(f"the voice {self.key} failed: {lines[-1][:300]}")


def kokoro_missing(models: Path | None) -> str | None:
    """Why Kokoro cannot speak here, or None when it can."""
    if importlib.util.find_spec("kokoro_onnx") is None:
        return "kokoro_onnx is not installed"
    if models is None:
        return "no folder for its model files is set"
    absent = [name for name in KOKORO_FILES if not (models / name).is_file()]
    if absent:
        return f"{' and '.join(absent)} not found in {models}"
    return None


def choose(spec: str, models: Path | None = None) -> tuple[Voice, str | None]:
    """The voice `spec` names ("espeak:en", "kokoro:af_heart"), or eSpeak and a warning saying why
    not. A bare name is an eSpeak voice."""
    engine, _, name = spec.partition(":") if ":" in spec else ("espeak", ":", spec)
    engine, name = engine.strip().lower(), name.strip()
    if engine == "espeak":
        return Voice("espeak", name or "en"), None
    if engine == "kokoro" and name:
        why = kokoro_missing(models)
        if why is None:
            return Voice("kokoro", name, models), None
        fallback = espeak_for(name)
        return fallback, f"the voice {spec} is not available ({why}); eSpeak ({fallback.name}) spoke instead"
    return Voice("espeak", "en"), f"there is no voice {spec!r}; eSpeak (en) spoke instead"


def espeak_for(kokoro_voice: str) -> Voice:
    """The eSpeak voice of a Kokoro voice's language."""
    return Voice("espeak", KOKORO_LANGUAGES.get(kokoro_voice[:1].lower(), ("", "en"))[1])


def wav_seconds(path: Path) -> float:
    with wave.open(str(path), "rb") as w:
        return w.getnframes() / w.getframerate()


def write_wav(path: Path, pcm: bytes, rate: int) -> None:
    """16-bit mono samples as a WAV file (the voices write their speech with it)."""
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm)


# The child process: everything below runs only in `python -P voice.py`.


def espeak(name: str, items: list[tuple[str, Path]]) -> None:
    import ctypes

    import espeakng_loader

    synchronous = 2  # AUDIO_OUTPUT_SYNCHRONOUS: espeak_Synth returns when the text is spoken
    chars_utf8 = 1  # espeakCHARS_UTF8
    lib = ctypes.CDLL(espeakng_loader.get_library_path())
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_Synth.argtypes = [
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_uint,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.c_uint,
        ctypes.c_void_p,
        ctypes.c_void_p,
    ]
    rate = lib.espeak_Initialize(synchronous, 0, espeakng_loader.get_data_path().encode(), 0)
    if rate <= 0:
        raise VoiceError("libespeak-ng did not start (its data folder is missing or unreadable)")
    if lib.espeak_SetVoiceByName(name.encode()) != 0:
        raise VoiceError(f"eSpeak has no voice {name!r}")

    samples = bytearray()
    callback_type = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)

    def collect(wav: Any, count: int, events: Any) -> int:
        if count > 0:
            samples.extend(ctypes.string_at(wav, count * 2))
        return 0

    keep = callback_type(collect)  # referenced until the end: libespeak-ng calls it
    lib.espeak_SetSynthCallback(keep)
    for text, path in items:
        samples.clear()
        data = text.encode() + b"\0"
        if lib.espeak_Synth(data, len(data), 0, 0, 0, chars_utf8, None, None) != 0:
            raise VoiceError(f"eSpeak could not speak {text[:60]!r}")
        lib.espeak_Synchronize()
        write_wav(path, bytes(samples), rate)
    lib.espeak_Terminate()


def kokoro(name: str, models: Path, items: list[tuple[str, Path]]) -> None:
    from kokoro_onnx import Kokoro

    model = Kokoro(str(models / KOKORO_FILES[0]), str(models / KOKORO_FILES[1]))
    lang = KOKORO_LANGUAGES.get(name[0].lower(), ("en-us", ""))[0]
    for text, path in items:
        audio, rate = model.create(text, voice=name, speed=1.0, lang=lang)
        pcm = (audio.clip(-1, 1) * 32767).astype("<i2").tobytes()
        write_wav(path, pcm, int(rate))


def main() -> int:
    request = json.loads(sys.stdin.buffer.read())
    items = [(text, Path(path)) for text, path in request["items"]]
    try:
        if request["engine"] == "kokoro":
            kokoro(request["name"], Path(request["models"]), items)
        else:
            espeak(request["name"], items)
    except VoiceError as e:
        print(e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
