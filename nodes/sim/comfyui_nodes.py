"""The node classes the simulated ComfyUI serves in /object_info, in the real answer's shapes.

Old-style nodes give a combo as `[[options…], {…}]`, newer ones as `["COMBO", {"options": […]}]`;
both appear in a real server, so both appear here (ImageScale vs ImageBlend, PROTOCOL.md)."""

from __future__ import annotations

import mimetypes
from typing import Any

Spec = list[Any]

SEED_MAX = 0xFFFFFFFFFFFFFFFF
SAMPLERS = [
    "euler", "euler_ancestral", "heun", "dpm_2", "dpmpp_2m", "dpmpp_sde", "dpmpp_3m_sde", "dpmpp_3m_sde_gpu",
    "ddim", "uni_pc",
]  # fmt: skip
SCHEDULERS = ["simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta", "normal"]
# Everything /models lists on a real 0.3.64 server, in its order.
MODEL_FOLDERS = [
    "checkpoints", "configs", "loras", "vae", "text_encoders", "diffusion_models", "clip_vision",
    "style_models", "embeddings", "diffusers", "vae_approx", "controlnet", "gligen", "upscale_models",
    "custom_nodes", "hypernetworks", "photomaker", "classifiers", "model_patches", "audio_encoders",
]  # fmt: skip
# Custom node packs a node may have installed, and the classes each adds. The RIFE checkpoints
# live in the pack's own folder (ckpts/rife, downloaded on first use), not in a model folder; so do
# Kokoro's (stavsap/comfyui-kokoro: kokoro_v1.onnx and voices_v1.bin, on first use).
CUSTOM_NODES = {
    "ComfyUI-Frame-Interpolation": ["RIFE VFI"],
    "comfyui-kokoro": ["KokoroGenerator", "KokoroSpeaker", "KokoroSpeakerCombiner"],
}
RIFE_CHECKPOINTS = [
    "rife40.pth", "rife41.pth", "sudo_rife4_269.662_testV1_scale1.pth", "rife42.pth", "rife43.pth",
    "rife44.pth", "rife45.pth", "rife46.pth", "rife47.pth", "rife48.pth", "rife49.pth",
]  # fmt: skip
UPSCALE_METHODS = ["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]
# CLIPLoader's model types in 0.3.64 ("stable_audio" is Stable Audio Open's T5).
CLIP_TYPES = [
    "stable_diffusion", "stable_cascade", "sd3", "stable_audio", "mochi", "ltxv", "pixart", "cosmos", "lumina2",
    "wan", "hidream", "chroma", "ace", "omnigen2", "qwen_image", "hunyuan_image",
]  # fmt: skip
# comfyui-kokoro's voices and languages, as its KokoroSpeaker and KokoroGenerator offer them.
KOKORO_VOICES = [
    "af_heart", "af_alloy", "af_aoede", "af_bella", "af_jessica", "af_kore", "af_nicole", "af_nova", "af_river",
    "af_sarah", "af_sky", "am_adam", "am_echo", "am_eric", "am_fenrir", "am_liam", "am_michael", "am_onyx",
    "am_puck", "am_santa", "bf_alice", "bf_emma", "bf_isabella", "bf_lily", "bm_daniel", "bm_fable", "bm_george",
    "bm_lewis", "jf_alpha", "jf_gongitsune", "jf_nezumi", "jf_tebukuro", "jm_kumo", "zf_xiaobei", "zf_xiaoni",
    "zf_xiaoxiao", "zf_xiaoyi", "zm_yunjian", "zm_yunxi", "zm_yunxia", "zm_yunyang", "ef_dora", "em_alex",
    "em_santa", "ff_siwis", "hf_alpha", "hf_beta", "hm_omega", "hm_psi", "if_sara", "im_nicola", "pf_dora",
    "pm_alex", "pm_santa",
]  # fmt: skip
KOKORO_LANGUAGES = [
    "English", "English (British)", "French", "Japanese", "Hindi", "Mandarin Chinese", "Spanish",
    "Brazilian Portuguese", "Italian",
]  # fmt: skip


def content_type(name: str) -> str | None:
    """A file's kind ("image", "video", …) as folder_paths.filter_files_content_types tells it: by
    the MIME type of its extension (webp is an image whatever the system's table says)."""
    if name.rsplit(".", 1)[-1] == "webp":
        return "image"
    mime, _ = mimetypes.guess_type(name, strict=False)
    return mime.split("/")[0] if mime else None


def integer(default: int, lo: int, hi: int, step: int = 1, **extra: Any) -> Spec:
    return ["INT", {"default": default, "min": lo, "max": hi, "step": step, **extra}]


def number(default: float, lo: float, hi: float, step: float = 0.01, **extra: Any) -> Spec:
    return ["FLOAT", {"default": default, "min": lo, "max": hi, "step": step, **extra}]


def text(default: str = "", **extra: Any) -> Spec:
    return ["STRING", {"default": default, **extra}]


def old_combo(options: list[Any], **extra: Any) -> Spec:
    return [options, extra] if extra else [options]


def new_combo(options: list[str], **extra: Any) -> Spec:
    return ["COMBO", {"options": options, **extra}]


def image(tooltip: str = "") -> Spec:
    return ["IMAGE", {"tooltip": tooltip}] if tooltip else ["IMAGE"]


def node(
    name: str,
    category: str,
    required: dict[str, Spec],
    outputs: list[str] | None = None,
    *,
    optional: dict[str, Spec] | None = None,
    hidden: dict[str, str] | None = None,
    names: list[str] | None = None,
    output_node: bool = False,
    module: str = "nodes",
    description: str = "",
) -> dict[str, Any]:
    outputs = outputs or []
    inputs: dict[str, Any] = {"required": required}
    order: dict[str, list[str]] = {"required": list(required)}
    if optional:
        inputs["optional"] = optional
        order["optional"] = list(optional)
    if hidden:
        inputs["hidden"] = hidden
        order["hidden"] = list(hidden)
    return {
        "input": inputs,
        "input_order": order,
        "output": outputs,
        "output_is_list": [False] * len(outputs),
        "output_name": names or list(outputs),
        "name": name,
        "display_name": name,
        "description": description,
        "python_module": module,
        "category": category,
        "output_node": output_node,
    }


def classes(
    models: dict[str, list[str]], inputs: list[str], custom_nodes: list[str] | None = None
) -> dict[str, dict[str, Any]]:
    """Every class, keyed by name; combos of files list what the server has right now (the input
    folder's images for LoadImage, its videos for LoadVideo, its sounds and videos for LoadAudio).
    Classes of custom node packs are there when the pack is in `custom_nodes` (all of CUSTOM_NODES
    when None)."""
    installed = list(CUSTOM_NODES) if custom_nodes is None else custom_nodes
    images = sorted(f for f in inputs if content_type(f) == "image")
    videos = sorted(f for f in inputs if content_type(f) == "video")
    sounds = sorted(f for f in inputs if content_type(f) in ("audio", "video"))
    prefix = text("ComfyUI", tooltip="The prefix for the file to save.")
    save_hidden = {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}
    extras = "comfy_extras.nodes_images"
    audio = "comfy_extras.nodes_audio"
    found = [
        # A text box of its own (core since ComfyUI 0.3.3x): a model-free workflow carries its prompt
        # in it, and so in the workflow its outputs keep as metadata.
        node("PrimitiveStringMultiline", "utils/primitive", {"value": text(multiline=True)}, ["STRING"],
             module="comfy_extras.nodes_primitive"),
        node("EmptyImage", "image", {
            "width": integer(512, 1, 16384), "height": integer(512, 1, 16384),
            "batch_size": integer(1, 1, 4096), "color": integer(0, 0, 0xFFFFFF, display="color"),
        }, ["IMAGE"]),
        node("ImageAddNoise", "image", {
            "image": image(),
            "seed": integer(0, 0, SEED_MAX, control_after_generate=True,
                            tooltip="The random seed used for creating the noise."),
            "strength": number(0.5, 0.0, 1.0),
        }, ["IMAGE"], module=extras),
        node("ImageBlur", "image/postprocessing", {
            "image": image(), "blur_radius": integer(1, 1, 31), "sigma": number(1.0, 0.1, 10.0, 0.1),
        }, ["IMAGE"], module="comfy_extras.nodes_post_processing"),
        node("ImageScale", "image/upscaling", {
            "image": image(),
            "upscale_method": old_combo(UPSCALE_METHODS),
            "width": integer(512, 0, 16384), "height": integer(512, 0, 16384),
            "crop": old_combo(["disabled", "center"]),
        }, ["IMAGE"]),
        node("ImageBlend", "image/postprocessing", {
            "image1": image(), "image2": image(), "blend_factor": number(0.5, 0.0, 1.0),
            "blend_mode": new_combo(["normal", "multiply", "screen", "overlay", "soft_light", "difference"]),
        }, ["IMAGE"], module="comfy_extras.nodes_post_processing"),
        node("ImageScaleBy", "image/upscaling", {
            "image": image(), "upscale_method": old_combo(UPSCALE_METHODS),
            "scale_by": number(1.0, 0.01, 8.0),
        }, ["IMAGE"]),
        node("ImageInvert", "image", {"image": image()}, ["IMAGE"]),
        node("ImageBatch", "image", {"image1": image(), "image2": image()}, ["IMAGE"]),
        node("RepeatImageBatch", "image/batch", {"image": image(), "amount": integer(1, 1, 4096)},
             ["IMAGE"], module=extras),
        node("LoadImage", "image", {"image": old_combo(images, image_upload=True)}, ["IMAGE", "MASK"]),
        # A newer-style node: its combo says multiselect false, as every io.Combo does.
        node("LoadVideo", "image/video", {"file": new_combo(videos, video_upload=True, multiselect=False)},
             ["VIDEO"], module="comfy_extras.nodes_video"),
        node("GetVideoComponents", "image/video", {
            "video": ["VIDEO", {"tooltip": "The video to extract components from."}],
        }, ["IMAGE", "AUDIO", "FLOAT"], names=["images", "audio", "fps"], module="comfy_extras.nodes_video",
             description="Extracts all components from a video: frames, audio, and framerate."),
        node("SaveImage", "image", {
            "images": image("The images to save."), "filename_prefix": prefix,
        }, hidden=save_hidden, output_node=True,
             description="Saves the input images to your ComfyUI output directory."),
        node("PreviewImage", "image", {"images": image()}, hidden=save_hidden, output_node=True,
             description="Saves the input images to your ComfyUI output directory."),
        node("SaveAnimatedWEBP", "image/animation", {
            "images": image(), "filename_prefix": text("ComfyUI"), "fps": number(6.0, 0.01, 1000.0),
            "lossless": ["BOOLEAN", {"default": True}], "quality": integer(80, 0, 100),
            "method": old_combo(["default", "fastest", "slowest"]),
        }, hidden=save_hidden, output_node=True, module=extras),
        node("SaveAnimatedPNG", "image/animation", {
            "images": image(), "filename_prefix": text("ComfyUI"), "fps": number(6.0, 0.01, 1000.0),
            "compress_level": integer(4, 0, 9),
        }, hidden=save_hidden, output_node=True, module=extras),
        node("SaveWEBM", "image/video", {
            "images": image(), "filename_prefix": text("ComfyUI"), "codec": new_combo(["vp9", "av1"]),
            "fps": number(24.0, 0.01, 1000.0), "crf": number(32.0, 0.0, 63.0, 1.0),
        }, hidden=save_hidden, output_node=True, module="comfy_extras.nodes_video"),
        node("CreateVideo", "image/video", {
            "images": image("The images to create a video from."), "fps": number(30.0, 1.0, 120.0, 1.0),
        }, ["VIDEO"], optional={"audio": ["AUDIO"]}, module="comfy_extras.nodes_video"),
        node("SaveVideo", "image/video", {
            "video": ["VIDEO", {"tooltip": "The video to save."}],
            "filename_prefix": text("video/ComfyUI"),
            "format": new_combo(["auto", "mp4"]), "codec": new_combo(["auto", "h264"]),
        }, hidden=save_hidden, output_node=True, module="comfy_extras.nodes_video"),
        node("SaveImageWebsocket", "api node/image", {"images": image()}, output_node=True,
             module="custom_nodes.websocket_image_save"),
        node("UpscaleModelLoader", "loaders", {"model_name": old_combo(models.get("upscale_models", []))},
             ["UPSCALE_MODEL"], module="comfy_extras.nodes_upscale_model"),
        node("ImageUpscaleWithModel", "image/upscaling", {
            "upscale_model": ["UPSCALE_MODEL"], "image": image(),
        }, ["IMAGE"], module="comfy_extras.nodes_upscale_model"),
        node("CheckpointLoaderSimple", "loaders", {"ckpt_name": old_combo(models.get("checkpoints", []))},
             ["MODEL", "CLIP", "VAE"], description="Loads a diffusion model checkpoint."),
        node("VAELoader", "loaders", {"vae_name": old_combo(models.get("vae", []))}, ["VAE"]),
        node("LoraLoader", "loaders", {
            "model": ["MODEL"], "clip": ["CLIP"], "lora_name": old_combo(models.get("loras", [])),
            "strength_model": number(1.0, -100.0, 100.0), "strength_clip": number(1.0, -100.0, 100.0),
        }, ["MODEL", "CLIP"]),
        node("CLIPTextEncode", "conditioning", {
            "text": text(multiline=True, dynamicPrompts=True), "clip": ["CLIP"],
        }, ["CONDITIONING"]),
        node("EmptyLatentImage", "latent", {
            "width": integer(512, 16, 16384, 8), "height": integer(512, 16, 16384, 8),
            "batch_size": integer(1, 1, 4096),
        }, ["LATENT"]),
        node("KSampler", "sampling", {
            "model": ["MODEL"], "seed": integer(0, 0, SEED_MAX, control_after_generate=True),
            "steps": integer(20, 1, 10000), "cfg": number(8.0, 0.0, 100.0, 0.1, round=0.01),
            "sampler_name": old_combo(SAMPLERS), "scheduler": old_combo(SCHEDULERS),
            "positive": ["CONDITIONING"], "negative": ["CONDITIONING"], "latent_image": ["LATENT"],
            "denoise": number(1.0, 0.0, 1.0),
        }, ["LATENT"]),
        node("VAEDecode", "latent", {"samples": ["LATENT"], "vae": ["VAE"]}, ["IMAGE"]),
        node("CLIPLoader", "advanced/loaders", {
            "clip_name": old_combo(models.get("text_encoders", [])), "type": old_combo(CLIP_TYPES),
        }, ["CLIP"], optional={"device": old_combo(["default", "cpu"], advanced=True)}),
        # comfy_extras/nodes_audio.py as in 0.3.64: old-style nodes, combos as [[options…], {…}].
        node("EmptyLatentAudio", "latent/audio", {
            "seconds": number(47.6, 1.0, 1000.0, 0.1),
            "batch_size": integer(1, 1, 4096, tooltip="The number of latent images in the batch."),
        }, ["LATENT"], module=audio),
        node("ConditioningStableAudio", "conditioning", {
            "positive": ["CONDITIONING"], "negative": ["CONDITIONING"],
            "seconds_start": number(0.0, 0.0, 1000.0, 0.1), "seconds_total": number(47.0, 0.0, 1000.0, 0.1),
        }, ["CONDITIONING", "CONDITIONING"], names=["positive", "negative"], module=audio),
        node("VAEDecodeAudio", "latent/audio", {"samples": ["LATENT"], "vae": ["VAE"]}, ["AUDIO"], module=audio),
        node("EmptyAudio", "audio", {
            "duration": number(60.0, 0.0, SEED_MAX, tooltip="Duration of the empty audio clip in seconds"),
            "sample_rate": ["INT", {"default": 44100, "tooltip": "Sample rate of the empty audio clip."}],
            "channels": integer(2, 1, 2, tooltip="Number of audio channels (1 for mono, 2 for stereo)."),
        }, ["AUDIO"], module=audio),
        node("LoadAudio", "audio", {"audio": old_combo(sounds, audio_upload=True)}, ["AUDIO"], module=audio),
        node("SaveAudio", "audio", {"audio": ["AUDIO"], "filename_prefix": text("audio/ComfyUI")},
             hidden=save_hidden, output_node=True, module=audio),
        node("SaveAudioMP3", "audio", {
            "audio": ["AUDIO"], "filename_prefix": text("audio/ComfyUI"),
            "quality": old_combo(["V0", "128k", "320k"], default="V0"),
        }, hidden=save_hidden, output_node=True, module=audio),
        node("SaveAudioOpus", "audio", {
            "audio": ["AUDIO"], "filename_prefix": text("audio/ComfyUI"),
            "quality": old_combo(["64k", "96k", "128k", "192k", "320k"], default="128k"),
        }, hidden=save_hidden, output_node=True, module=audio),
        node("PreviewAudio", "audio", {"audio": ["AUDIO"]}, hidden=save_hidden, output_node=True, module=audio),
    ]  # fmt: skip
    if "ComfyUI-Frame-Interpolation" in installed:
        found.append(
            node("RIFE VFI", "ComfyUI-Frame-Interpolation/VFI", {
                "ckpt_name": old_combo(RIFE_CHECKPOINTS, default="rife47.pth"),
                "frames": ["IMAGE"],
                "clear_cache_after_n_frames": integer(10, 1, 1000),
                "multiplier": ["INT", {"default": 2, "min": 1}],
                "fast_mode": ["BOOLEAN", {"default": True}],
                "ensemble": ["BOOLEAN", {"default": True}],
                "scale_factor": old_combo([0.25, 0.5, 1.0, 2.0, 4.0], default=1.0),
            }, ["IMAGE"], optional={"optional_interpolation_states": ["INTERPOLATION_STATES"]},
                 module="custom_nodes.ComfyUI-Frame-Interpolation")
        )  # fmt: skip
    if "comfyui-kokoro" in installed:
        kokoro = "custom_nodes.comfyui-kokoro"
        found += [
            node("KokoroSpeaker", "kokoro", {"speaker_name": old_combo(KOKORO_VOICES, default="af_sarah")},
                 ["KOKORO_SPEAKER"], names=["speaker"], module=kokoro),
            node("KokoroSpeakerCombiner", "kokoro", {
                "speaker_a": ["KOKORO_SPEAKER"], "speaker_b": ["KOKORO_SPEAKER"],
                "weight": number(0.5, 0, 1, 0.05),
            }, ["KOKORO_SPEAKER"], names=["speaker"], module=kokoro),
            node("KokoroGenerator", "kokoro", {
                "text": text("I am a synthesized robot", multiline=True), "speaker": ["KOKORO_SPEAKER"],
                "speed": number(1, 0.1, 4, 0.05), "lang": old_combo(KOKORO_LANGUAGES, default="English"),
            }, ["AUDIO"], names=["audio"], module=kokoro),
        ]  # fmt: skip
    return {c["name"]: c for c in found}
