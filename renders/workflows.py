"""ComfyUI workflow templates: parse and check an API-format graph, find where the render
parameters go, and write them in.

A template is an API-format graph (the value of "prompt" in POST /prompt: node id → {"class_type",
"inputs"}) plus a mapping: parameter name → [(node id, input name), …]. detect() proposes the mapping,
the user may correct it, apply() writes a job's parameters into a copy of the graph.
"""

from __future__ import annotations

import copy
import json
import secrets
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeGuard

from nodes.clients.http import depth

MAX_BYTES = 5 * 1024 * 1024
# Real workflows have tens of nodes, a few hundred at most. Thousands are junk, and every job of the
# template would copy, store and send them.
MAX_NODES = 2000
# How deeply one input's value may nest: a link is [id, slot], one level; real values go two or three.
# Much deeper ones break Python's recursive walks later (deepcopy, json.dumps into the database and
# to ComfyUI), at every attempt of every render.
MAX_DEPTH = 32

SHIPPED_DIR = Path(__file__).with_name("workflows")

# Nodes ComfyUI treats as outputs; anything else with "Save" in its class name counts too.
OUTPUT_CLASSES = frozenset(
    {
        "SaveImage",
        "SaveAnimatedWEBP",
        "SaveAnimatedPNG",
        "SaveVideo",
        "SaveWEBM",
        "SaveImageWebsocket",
        "PreviewImage",
        "PreviewAny",
        "SaveAudio",
        "PreviewAudio",
        "VHS_VideoCombine",
    }
)
VIDEO_OUTPUT_CLASSES = frozenset(
    {"SaveAnimatedWEBP", "SaveAnimatedPNG", "SaveVideo", "SaveWEBM", "CreateVideo", "VHS_VideoCombine"}
)

# Loader input → ComfyUI model folder. (class, input) pairs win over the input name alone.
FILE_INPUTS = {
    "ckpt_name": "checkpoints",
    "lora_name": "loras",
    "vae_name": "vae",
    "unet_name": "diffusion_models",
    "clip_name": "text_encoders",
    "clip_name1": "text_encoders",
    "clip_name2": "text_encoders",
    "clip_name3": "text_encoders",
    "clip_name4": "text_encoders",
    "control_net_name": "controlnet",
    "style_model_name": "style_models",
    "gligen_name": "gligen",
    "hypernetwork_name": "hypernetworks",
    "audio_encoder_name": "audio_encoders",
}
CLASS_FILE_INPUTS = {
    ("CLIPVisionLoader", "clip_name"): "clip_vision",
    ("UpscaleModelLoader", "model_name"): "upscale_models",
    ("PhotoMakerLoader", "photomaker_model_name"): "photomaker",
}

TEXT_INPUTS = ("text", "text_g", "text_l", "clip_l", "t5xxl", "prompt")
LORA_CLASSES = frozenset({"LoraLoader", "LoraLoaderModelOnly"})
# Inputs that hold a frame count whatever the node; "batch_size" only counts on video latents.
FRAME_INPUTS = ("length", "frames", "num_frames", "frame_count", "video_frames")
FPS_INPUTS = ("fps", "frame_rate")
TEXT_PRIMITIVES = frozenset({"PrimitiveString", "PrimitiveStringMultiline"})
# Inputs that hold how many seconds of sound a node makes: EmptyLatentAudio's (and ACE-Step's
# EmptyAceStepLatentAudio's) "seconds", the length Stable Audio is conditioned on, EmptyAudio's length.
SECONDS_INPUTS = ("seconds", "seconds_total")
CLASS_SECONDS_INPUTS = {("EmptyAudio", "duration")}
# Text-to-speech nodes of custom node packs and the input with the words they speak; other classes
# named *TTS* count when they have a "text".
SPEECH_TEXT_INPUTS = {"KokoroGenerator": "text"}

PARAMETERS = (
    "positive",
    "negative",
    "seed",
    "steps",
    "cfg",
    "width",
    "height",
    "frames",
    "fps",
    "seconds",
    "image",
    "video",
    "loras",
    "filename_prefix",
)

SETTINGS_LIMITS: dict[str, tuple[float, float]] = {
    "width": (64, 8192),
    "height": (64, 8192),
    "frames": (1, 1024),
    "fps": (1, 120),
    # EmptyLatentAudio takes 1 to 1000; ten minutes is longer than any one cue or line of a film.
    "seconds": (1, 600),
    "steps": (1, 200),
    "cfg": (0, 30),
    "seed": (0, 2**64 - 1),
}
INTEGER_SETTINGS = frozenset({"width", "height", "frames", "steps", "seed"})

ParamMap = dict[str, list[tuple[str, str]]]


class WorkflowError(ValueError):
    """A workflow or mapping we cannot use; the message says what is wrong and what to do."""


def _is_link(value: Any) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], int)
        and not isinstance(value[1], bool)
    )


def _is_number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def is_output(class_type: str) -> bool:
    return class_type in OUTPUT_CLASSES or "Save" in class_type


def _ids(ids: Iterable[str], limit: int = 5) -> str:
    ids = list(ids)
    shown = ", ".join(ids[:limit])
    return shown + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


def parse(text: str | bytes, *, max_bytes: int = MAX_BYTES) -> dict[str, Any]:
    """Turn uploaded or pasted text into an API-format graph, or raise WorkflowError saying why not."""
    # A str is at least as many UTF-8 bytes as characters: refuse a huge one before encoding it.
    size = len(text) if isinstance(text, bytes) or len(text) > max_bytes else len(text.encode("utf-8", "replace"))
    if size > max_bytes:
        raise WorkflowError(
            f"The workflow is {_size(size)}, over the {_size(max_bytes)} limit. A ComfyUI workflow is "
            "a few kilobytes, so this looks like megabytes of junk: upload the workflow's JSON file instead."
        )
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            raise WorkflowError(
                f"The workflow is not UTF-8 text (bad byte at position {e.start}). "
                "Upload the .json file ComfyUI saved, not an image or archive."
            ) from e
    if not text.strip():
        raise WorkflowError("The workflow is empty. Paste or upload a ComfyUI workflow in API format.")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise WorkflowError(
            f"The workflow is not JSON: {e.msg} at line {e.lineno}, column {e.colno}. "
            "Export it from ComfyUI with Workflow → Export (API) and upload that file unchanged."
        ) from e
    except RecursionError as e:
        raise WorkflowError(
            f"The workflow is nested hundreds of levels deep, too deeply to read; a node's input may nest "
            f"{MAX_DEPTH} levels. Export the workflow from ComfyUI with Workflow → Export (API) and upload that file."
        ) from e

    if not isinstance(data, dict):
        raise WorkflowError(
            f"The workflow is a JSON {_json_type(data)}, but an API-format workflow is an object of nodes "
            'keyed by id ({"1": {"class_type": …, "inputs": {…}}, …}). Export it with Workflow → Export (API).'
        )
    if isinstance(data.get("nodes"), list) and isinstance(data.get("links"), list):
        raise WorkflowError(
            "This is ComfyUI's UI format (the file Save/Export writes, with nodes and links lists), not the API "
            "format needed to queue it. In ComfyUI open the workflow and use Workflow → Export (API) (in older "
            'versions enable "Dev mode" in the settings and use "Save (API Format)"), then upload that file.'
        )
    prompt = data.get("prompt")
    if isinstance(prompt, dict) and not any(_looks_like_node(v) for v in data.values()):
        data = prompt  # a POST /prompt body or a history entry: {"prompt": {...}, "client_id": ...}
    if not data:
        raise WorkflowError("The workflow has no nodes. Export a workflow with at least a save node from ComfyUI.")
    if len(data) > MAX_NODES:
        raise WorkflowError(
            f"The workflow has {len(data):,} nodes, over the limit of {MAX_NODES:,}. A ComfyUI workflow has tens "
            "of nodes, a few hundred at most: remove the nodes it does not need, or split it into several "
            "templates, and export it again."
        )

    bad = [node_id for node_id, node in data.items() if not _looks_like_node(node)]
    if bad:
        raise WorkflowError(
            f"Node{'s' if len(bad) > 1 else ''} {_ids(bad)} {'have' if len(bad) > 1 else 'has'} no class_type "
            "and inputs, so this is not an API-format workflow. Export it from ComfyUI with Workflow → Export (API)."
        )
    for node_id, node in data.items():
        check_depth(node_id, node)
        for name, value in node["inputs"].items():
            if _is_link(value) and value[0] not in data:
                raise WorkflowError(
                    f"Node {node_id} ({node['class_type']}) input {name!r} is linked to node {value[0]}, which is "
                    "not in the workflow. Re-export the whole workflow from ComfyUI with Workflow → Export (API)."
                )
    if not any(is_output(node["class_type"]) for node in data.values()):
        raise WorkflowError(
            "The workflow has no output node, so ComfyUI would run nothing. Add a save node "
            "(SaveImage, SaveVideo, SaveAnimatedWEBP, VHS_VideoCombine, …) and export it again."
        )
    return data


def check_depth(node_id: str, node: Mapping[str, Any]) -> None:
    """WorkflowError naming the node and input (or other field, like _meta) nested over MAX_DEPTH."""
    places = [(f"input {name!r}", value) for name, value in node["inputs"].items()]
    places += [(f"field {key!r}", value) for key, value in node.items() if key != "inputs"]
    for where, value in places:
        levels = depth(value)
        if levels > MAX_DEPTH:
            raise WorkflowError(
                f"Node {node_id} ({node['class_type']}) {where} is nested {levels} levels deep, over the limit of "
                f"{MAX_DEPTH}; no ComfyUI node takes a value like that. Fix or remove it in ComfyUI and import "
                "the workflow again."
            )


def _json_type(value: Any) -> str:
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    return "null" if value is None else "number"


def _size(n: int) -> str:
    if n >= 2**20:
        return f"{n / 2**20:.1f} MB"
    return f"{n / 2**10:.1f} KB" if n >= 2**10 else f"{n} bytes"


def _looks_like_node(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and isinstance(value.get("class_type"), str)
        and bool(value["class_type"])
        and isinstance(value.get("inputs"), dict)
    )


def check_classes(workflow: Mapping[str, Any], object_info_classes: Collection[str]) -> list[str]:
    """Node classes the workflow uses that a ComfyUI server (its /object_info keys) lacks."""
    return sorted({node["class_type"] for node in workflow.values()} - set(object_info_classes))


def requirements(workflow: Mapping[str, Any]) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    """The node classes used and the (model folder, file name) pairs the loader nodes name."""
    classes = sorted({node["class_type"] for node in workflow.values()})
    files = set()
    for node in workflow.values():
        if node["class_type"].endswith(" VFI"):
            # ComfyUI-Frame-Interpolation's nodes ("RIFE VFI", "FILM VFI", …) download their
            # ckpt_name into the pack's own folder on first use: no model folder holds it.
            continue
        for name, value in node["inputs"].items():
            folder = CLASS_FILE_INPUTS.get((node["class_type"], name)) or FILE_INPUTS.get(name)
            if folder and isinstance(value, str) and value:
                files.add((folder, value))
    return tuple(classes), tuple(sorted(files))


# --- detection ---------------------------------------------------------------------------------


def _is_encoder(node: Mapping[str, Any]) -> bool:
    return "TextEncode" in node["class_type"] and any(isinstance(node["inputs"].get(n), str) for n in TEXT_INPUTS)


def _is_sampler(node: Mapping[str, Any]) -> bool:
    class_type = node["class_type"]
    inputs = node["inputs"]
    return (
        ("Sampler" in class_type or "Guider" in class_type)
        and _is_link(inputs.get("positive"))
        and _is_link(inputs.get("negative"))
    )


def _encoders_upstream(workflow: Mapping[str, Any], links: Iterable[list[Any]]) -> set[str]:
    """Text encoders feeding any of the conditioning links, walking back through conditioning nodes.

    Nodes that take both positive and negative (WanImageToVideo, ControlNetApplyAdvanced, …) return
    them as outputs 0 and 1, so the output slot says which of the two to follow. One walk serves all
    the links and visits each (node, slot) once, however many samplers share a chain of conditioning.
    """
    found: set[str] = set()
    seen: set[tuple[str, int]] = set()
    todo = [(link[0], link[1]) for link in links]
    while todo:
        node_id, slot = todo.pop()
        if (node_id, slot) in seen or node_id not in workflow:
            continue
        seen.add((node_id, slot))
        node = workflow[node_id]
        if _is_encoder(node):
            found.add(node_id)
            continue
        inputs = node["inputs"]
        if _is_link(inputs.get("positive")) and _is_link(inputs.get("negative")) and slot in (0, 1):
            source = inputs["positive" if slot == 0 else "negative"]
            todo.append((source[0], source[1]))
            continue
        for name, value in inputs.items():
            if _is_link(value) and ("cond" in name or name in ("positive", "negative")):
                todo.append((value[0], value[1]))
    return found


def _title(node: Mapping[str, Any]) -> str:
    meta = node.get("_meta")
    return str(meta.get("title", "")) if isinstance(meta, dict) else ""


def detect(workflow: Mapping[str, Any]) -> ParamMap:
    """Propose where each render parameter goes: name → [(node id, input name), …], found ones only."""
    found: ParamMap = {name: [] for name in PARAMETERS}
    placed: set[tuple[str, str, str]] = set()  # found's entries, so that adding one stays quick

    def add(name: str, node_id: str, input_name: str) -> None:
        if (name, node_id, input_name) not in placed:
            placed.add((name, node_id, input_name))
            found[name].append((node_id, input_name))

    samplers = [node["inputs"] for node in workflow.values() if _is_sampler(node)]
    positive = _encoders_upstream(workflow, (inputs["positive"] for inputs in samplers))
    # A negative made by zeroing the positive (Flux's ConditioningZeroOut) must not get the negative text.
    negative = _encoders_upstream(workflow, (inputs["negative"] for inputs in samplers)) - positive
    has_video_output = any(node["class_type"] in VIDEO_OUTPUT_CLASSES for node in workflow.values())
    has_length = any(_is_number(node["inputs"].get(name)) for node in workflow.values() for name in FRAME_INPUTS)

    for node_id, node in workflow.items():
        class_type = node["class_type"]
        inputs = node["inputs"]
        if _is_encoder(node):
            if node_id in positive:
                side = "positive"
            elif node_id in negative:
                side = "negative"
            else:
                side = "negative" if "neg" in _title(node).lower() else "positive"
            for name in TEXT_INPUTS:
                if isinstance(inputs.get(name), str):
                    add(side, node_id, name)
        if class_type in TEXT_PRIMITIVES and isinstance(inputs.get("value"), str) and "prompt" in _title(node).lower():
            # A text box titled as a prompt: where the text goes (an encoder it feeds has a link, not text).
            add("negative" if "neg" in _title(node).lower() else "positive", node_id, "value")
        speech = SPEECH_TEXT_INPUTS.get(class_type) or ("text" if "TTS" in class_type else "")
        if speech and isinstance(inputs.get(speech), str):
            add("positive", node_id, speech)  # the words a text-to-speech node speaks
        for name in ("positive_prompt", "negative_prompt"):  # encoders holding both, e.g. WanVideoTextEncode
            if isinstance(inputs.get(name), str):
                add(name.split("_")[0], node_id, name)
        for name in ("seed", "noise_seed"):
            if _is_number(inputs.get(name)):
                add("seed", node_id, name)
        for name in ("steps", "cfg"):
            if _is_number(inputs.get(name)):
                add(name, node_id, name)
        for name in FRAME_INPUTS:
            if _is_number(inputs.get(name)):
                add("frames", node_id, name)
        if (
            not has_length
            and has_video_output
            and _is_number(inputs.get("batch_size"))
            and ("Latent" in class_type or class_type == "EmptyImage")
        ):
            add("frames", node_id, "batch_size")
        for name in FPS_INPUTS:
            if _is_number(inputs.get(name)):
                add("fps", node_id, name)
        for name in SECONDS_INPUTS:
            if _is_number(inputs.get(name)):
                add("seconds", node_id, name)
        for cls, name in CLASS_SECONDS_INPUTS:
            if class_type == cls and _is_number(inputs.get(name)):
                add("seconds", node_id, name)
        if class_type.startswith("LoadImage") and isinstance(inputs.get("image"), str):
            add("image", node_id, "image")
        if "LoadVideo" in class_type:  # ComfyUI's LoadVideo names its file "file", VHS_LoadVideo "video"
            for name in ("file", "video"):
                if isinstance(inputs.get(name), str):
                    add("video", node_id, name)
        if class_type in LORA_CLASSES and isinstance(inputs.get("lora_name"), str):
            add("loras", node_id, "lora_name")
        if isinstance(inputs.get("filename_prefix"), str):
            add("filename_prefix", node_id, "filename_prefix")

    # The size of the picture is set where it is made (empty latents and images, *ToVideo conditioning),
    # not where it is resized; other width/height inputs only count when there is nothing else.
    for strict in (True, False):
        for node_id, node in workflow.items():
            class_type = node["class_type"]
            makes_size = class_type.startswith("Empty") or "Latent" in class_type or class_type.endswith("ToVideo")
            if strict and not makes_size:
                continue
            if _is_number(node["inputs"].get("width")) and _is_number(node["inputs"].get("height")):
                add("width", node_id, "width")
                add("height", node_id, "height")
        if found["width"]:
            break
    return {name: places for name, places in found.items() if places}


# --- applying ----------------------------------------------------------------------------------


def random_seed() -> int:
    # Below 2**53 so the seed survives a round trip through JavaScript in the browser.
    return secrets.randbelow(2**53)


def _lora(entry: Any) -> tuple[str, float | None]:
    if isinstance(entry, str):
        return entry, None
    if isinstance(entry, Mapping):
        return str(entry["name"]), entry.get("strength")
    name, strength = entry
    return str(name), strength


def apply(
    workflow: Mapping[str, Any], mapping: Mapping[str, Iterable[Iterable[str]]], params: Mapping[str, Any]
) -> dict[str, Any]:
    """A copy of the workflow with params written where the mapping says; the input is not touched.

    params: positive, negative, filename_prefix, image, video (str); seed (int, or "random"/-1 for a fresh one);
    steps, width, height, frames (int); cfg, fps, seconds (number); loras (list of names, (name, strength) or
    {"name", "strength"}, given to the template's LoRA loaders in order). None or missing means keep.
    """
    # A template imported before parse() bounded nesting would fail deepcopy at every attempt.
    for node_id, node in workflow.items():
        check_depth(node_id, node)
    result: dict[str, Any] = copy.deepcopy(dict(workflow))
    places = {name: [tuple(place) for place in mapping.get(name, ())] for name in PARAMETERS}
    for name, entries in places.items():
        for place in entries:
            if len(place) != 2 or place[0] not in result:
                raise WorkflowError(
                    f"The {name} mapping points at {'/'.join(map(str, place))}, which is not in the workflow. "
                    "Fix the template's mapping (detect it again or pick the node by hand)."
                )

    def put(name: str, value: Any) -> None:
        for node_id, input_name in places[name]:
            inputs = result[node_id]["inputs"]
            if name == "steps":
                _rescale_split(inputs, int(value))
            inputs[input_name] = value

    for name, value in params.items():
        if value is None or name not in PARAMETERS or name == "loras":
            continue
        if name == "seed" and (value == "random" or value == -1):
            value = random_seed()
        elif name in INTEGER_SETTINGS:
            value = int(value)
        elif name in ("cfg", "fps", "seconds"):
            value = float(value)
        put(name, value)

    loras = params.get("loras")
    if loras:
        loaders = places["loras"]
        if len(loras) > len(loaders):
            raise WorkflowError(
                f"{len(loras)} LoRA{'s were' if len(loras) > 1 else ' was'} given but the template has "
                f"{len(loaders)} LoRA loader node{'' if len(loaders) == 1 else 's'}. "
                "Add LoraLoader nodes to the template or choose fewer LoRAs."
            )
        for (node_id, input_name), entry in zip(loaders, loras, strict=False):
            lora_name, strength = _lora(entry)
            inputs = result[node_id]["inputs"]
            inputs[input_name] = lora_name
            if strength is not None:
                for key in ("strength_model", "strength_clip"):
                    if key in inputs:
                        inputs[key] = float(strength)
    return result


def read(workflow: Mapping[str, Any], mapping: Mapping[str, Iterable[Iterable[str]]]) -> dict[str, Any]:
    """What a workflow holds where the mapping puts each parameter (its first place): of a
    template's own workflow, its defaults; of a job's workflow as it was sent, the settings it
    rendered with (the seed a "random" became included). Links and missing places are left out;
    loras is the list of LoRA file names."""
    values: dict[str, Any] = {}
    for name in PARAMETERS:
        found = []
        for place in mapping.get(name, ()):
            node_id, input_name = tuple(place)
            value = workflow.get(node_id, {}).get("inputs", {}).get(input_name)
            if value is not None and not _is_link(value):
                found.append(value)
        if found:
            values[name] = found if name == "loras" else found[0]
    return values


def _rescale_split(inputs: dict[str, Any], steps: int) -> None:
    # Wan 2.2 runs two KSamplerAdvanced over one schedule, switching models at a step; keep the switch
    # at the same fraction of the schedule when the step count changes.
    old = inputs.get("steps")
    if not _is_number(old) or old <= 0:
        return
    for key in ("start_at_step", "end_at_step"):
        value = inputs.get(key)
        if _is_number(value) and 0 < value < old:
            inputs[key] = max(1, round(value * steps / old))


# --- settings ----------------------------------------------------------------------------------


def validate_settings(params: Mapping[str, Any]) -> dict[str, str]:
    """Errors by field for the render settings that are present (None or "" means not given)."""
    errors: dict[str, str] = {}
    for name, (low, high) in SETTINGS_LIMITS.items():
        value = params.get(name)
        if value is None or value == "":
            continue
        label = name.capitalize() if name != "cfg" else "CFG"
        if name == "seed" and (value == "random" or value == -1 or value == "-1"):
            continue
        number = _number(value, whole=name in INTEGER_SETTINGS)
        if number is None:
            kind = "a whole number" if name in INTEGER_SETTINGS else "a number"
            extra = ' or "random"' if name == "seed" else ""
            errors[name] = f"{label} must be {kind}{extra}, not {value!r}."
        elif not low <= number <= high:
            errors[name] = f"{label} must be between {_plain(low)} and {_plain(high)}; got {_plain(number)}."
        elif name in ("width", "height") and number % 8:
            errors[name] = f"{label} must be a multiple of 8 (try {int(round(number / 8) * 8)})."
    return errors


def _plain(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _number(value: Any, *, whole: bool) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = int(value.strip())  # exact, for seeds beyond a float's 53 bits
        except ValueError:
            try:
                value = float(value.strip())
            except ValueError:
                return None
    if not _is_number(value) or value != value or value in (float("inf"), float("-inf")):
        return None
    if whole:
        if int(value) != value:
            return None
        return int(value)
    return float(value)


# --- shipped templates -------------------------------------------------------------------------


def shipped() -> list[dict[str, Any]]:
    """The templates in renders/workflows/*.json, mapping places as (node id, input) tuples."""
    templates = []
    for path in sorted(SHIPPED_DIR.glob("*.json")):
        template = json.loads(path.read_text(encoding="utf-8"))
        template["mapping"] = {
            name: [(str(node_id), str(input_name)) for node_id, input_name in places]
            for name, places in template["mapping"].items()
        }
        templates.append(template)
    return templates
