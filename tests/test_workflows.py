"""Workflow templates: parsing and its errors, hostile workflows, node classes and model files,
parameter detection, applying render settings, settings limits, the templates we ship, and the
render graph's templates (keyframe → image-to-video → upscale → interpolation, and the film's
narration speech and music) on a simulated node."""

from __future__ import annotations

import copy
import html
import io
import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import av
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse

from nodes.clients.comfyui import ComfyUI, FileRef, WorkflowRejected, failure, outputs_of, succeeded
from nodes.sim import comfyui_nodes
from nodes.sim.comfyui import SimComfyUI, default_models
from renders.models import Template
from renders.workflows import (
    MAX_DEPTH,
    MAX_NODES,
    SETTINGS_LIMITS,
    SHIPPED_DIR,
    WorkflowError,
    apply,
    check_classes,
    detect,
    parse,
    read,
    requirements,
    shipped,
    validate_settings,
)
from tests.conftest import ended

SHARED = Path("/work/shared/comfyui/workflows")
if not SHARED.is_dir():
    SHARED = Path(__file__).resolve().parents[2] / "shared" / "comfyui" / "workflows"


def shared(name: str) -> dict[str, Any]:
    return json.loads((SHARED / name).read_text())


def template(name: str) -> dict[str, Any]:
    return next(t for t in shipped() if t["name"] == name)


def node(class_type: str, title: str | None = None, **inputs: Any) -> dict[str, Any]:
    result: dict[str, Any] = {"class_type": class_type, "inputs": inputs}
    if title:
        result["_meta"] = {"title": title}
    return result


STILL = json.dumps(
    {
        "1": node("EmptyImage", width=64, height=64, batch_size=1, color=0),
        "2": node("SaveImage", images=["1", 0], filename_prefix="x"),
    }
)


# --- parse ---------------------------------------------------------------------------------------


def test_it_parses_an_api_format_workflow_from_text_and_bytes() -> None:
    assert parse(STILL)["2"]["class_type"] == "SaveImage"
    assert parse(STILL.encode())["1"]["inputs"]["width"] == 64
    assert parse(b"\xef\xbb\xbf" + STILL.encode())["1"]["class_type"] == "EmptyImage"  # BOM from Windows editors


def test_it_points_at_the_line_and_column_of_broken_json() -> None:
    with pytest.raises(WorkflowError, match=r"not JSON: Expecting .* at line 3, column 2.*Export \(API\)"):
        parse('{\n "1": {"class_type": "SaveImage"\n}')


def test_it_refuses_megabytes_of_junk_before_reading_it() -> None:
    with pytest.raises(WorkflowError, match=r"5\.7 MB, over the 5\.0 MB limit.*megabytes of junk"):
        parse(b"x" * 6_000_000)
    with pytest.raises(WorkflowError, match="megabytes of junk"):
        parse(STILL, max_bytes=100)


@pytest.mark.parametrize("text", ["", "   \n", b"", b"\n\t"])
def test_it_says_an_empty_upload_is_empty(text: str | bytes) -> None:
    with pytest.raises(WorkflowError, match="The workflow is empty"):
        parse(text)


def test_it_says_an_empty_object_has_no_nodes() -> None:
    with pytest.raises(WorkflowError, match="has no nodes"):
        parse("{}")
    with pytest.raises(WorkflowError, match="has no nodes"):
        parse('{"prompt": {}, "client_id": "x"}')


def test_it_recognises_the_ui_format_and_says_how_to_export_the_api_format() -> None:
    ui = {"last_node_id": 2, "nodes": [{"id": 1, "type": "EmptyImage", "widgets_values": [512]}], "links": []}
    with pytest.raises(WorkflowError) as e:
        parse(json.dumps(ui))
    message = str(e.value)
    assert "UI format" in message
    assert "Export (API)" in message
    assert "Dev mode" in message and "Save (API Format)" in message


def test_it_unwraps_a_post_prompt_body() -> None:
    body = {"prompt": json.loads(STILL), "client_id": "abc", "extra_data": {}}
    assert parse(json.dumps(body)) == json.loads(STILL)


@pytest.mark.parametrize(
    ("text", "kind"),
    [("[1, 2, 3]", "array"), ('"a string"', "string"), ("42", "number"), ("null", "null"), ("true", "boolean")],
)
def test_it_refuses_json_that_is_not_an_object_of_nodes(text: str, kind: str) -> None:
    with pytest.raises(WorkflowError, match=rf"is a JSON {kind}, but an API-format workflow is an object of nodes"):
        parse(text)


@pytest.mark.parametrize(
    ("bad", "ids"),
    [
        ({"1": {"inputs": {}}}, "Node 1 has"),
        ({"1": {"class_type": "SaveImage"}}, "Node 1 has"),
        ({"1": {"class_type": "", "inputs": {}}}, "Node 1 has"),
        ({"1": "SaveImage", "2": [1]}, "Nodes 1, 2 have"),
    ],
)
def test_it_refuses_nodes_without_class_type_or_inputs(bad: dict[str, Any], ids: str) -> None:
    with pytest.raises(WorkflowError, match=rf"{ids} no class_type and inputs.*not an API-format workflow"):
        parse(json.dumps(bad))


def test_it_refuses_a_link_to_a_node_that_is_not_there() -> None:
    workflow = {"2": node("SaveImage", images=["9", 0], filename_prefix="x")}
    with pytest.raises(WorkflowError, match=r"Node 2 \(SaveImage\) input 'images' is linked to node 9, which is not"):
        parse(json.dumps(workflow))


def test_it_refuses_a_workflow_without_an_output_node() -> None:
    with pytest.raises(WorkflowError, match=r"no output node.*Add a save node"):
        parse((SHARED / "validation_error_no_outputs.json").read_bytes())


@pytest.mark.parametrize(
    "output", ["SaveImage", "PreviewImage", "VHS_VideoCombine", "SaveImageWebsocket", "MyPack_SaveGif"]
)
def test_it_accepts_any_known_or_save_named_output(output: str) -> None:
    workflow = {"1": node("EmptyImage", width=8, height=8, batch_size=1, color=0), "2": node(output, images=["1", 0])}
    assert parse(json.dumps(workflow))["2"]["class_type"] == output


def test_it_refuses_bytes_that_are_not_text() -> None:
    with pytest.raises(WorkflowError, match="not UTF-8 text"):
        parse(b"\x89PNG\r\n\x1a\n\xff\xfe")


@pytest.mark.parametrize(
    "path", sorted(p.name for p in SHARED.glob("*.json") if p.name != "validation_error_no_outputs.json")
)
def test_it_parses_every_shared_workflow_with_an_output(path: str) -> None:
    assert parse((SHARED / path).read_bytes()) == shared(path)


# --- hostile workflows ---------------------------------------------------------------------------


def sampler(positive: str, negative: str, seed: int) -> dict[str, Any]:
    return node(
        "KSampler",
        model=["m", 0],
        seed=seed,
        steps=20,
        cfg=7.0,
        positive=[positive, 0],
        negative=[negative, 0],
        latent_image=["l", 0],
    )


def base() -> dict[str, Any]:
    return {
        "m": node("CheckpointLoaderSimple", ckpt_name="m.safetensors"),
        "l": node("EmptyLatentImage", width=512, height=512, batch_size=1),
        "p": node("CLIPTextEncode", text="a cat", clip=["m", 1]),
        "n": node("CLIPTextEncode", text="ugly", clip=["m", 1]),
        "s": node("SaveImage", images=["k0", 0], filename_prefix="x"),
    }


def shared_encoders(size: int) -> dict[str, Any]:
    """`size` nodes, nearly all samplers fed by the same two encoders."""
    workflow = base()
    for i in range(size - len(workflow)):
        workflow[f"k{i}"] = sampler("p", "n", i)
    return workflow


def chain(size: int) -> dict[str, Any]:
    """`size` nodes: the positive encoder at the end of a long chain of conditioning nodes, and a
    sampler at every link of it (each sampler's walk back to the encoder is as long as the chain)."""
    workflow, previous = base(), "p"
    for i in range((size - len(workflow)) // 2):
        workflow[f"c{i}"] = node("ConditioningSetArea", conditioning=[previous, 0], strength=1.0)
        workflow[f"k{i}"] = sampler(f"c{i}", "n", i)
        previous = f"c{i}"
    if len(workflow) < size:
        workflow["extra"] = node("PrimitiveInt", value=1)
    return workflow


def nested(levels: int) -> str:
    """JSON for a list nested `levels` deep, written out as an upload would carry it."""
    return "[" * levels + "]" * levels


def hostile_input(levels: int) -> str:
    return '{"1": {"class_type": "SaveImage", "inputs": {"images": ' + nested(levels) + "}}}"


def test_a_workflow_of_ten_thousand_nodes_is_refused_saying_how_many_and_the_limit() -> None:
    with pytest.raises(WorkflowError, match=r"has 10,000 nodes, over the limit of 2,000.*remove the nodes"):
        parse(json.dumps(chain(10_000)))
    with pytest.raises(WorkflowError, match=r"has 2,001 nodes, over the limit of 2,000"):
        parse(json.dumps(shared_encoders(MAX_NODES + 1)))


@pytest.mark.parametrize("build", [chain, shared_encoders], ids=["chain", "shared-encoders"])
def test_a_workflow_at_the_node_limit_is_parsed_and_every_sampler_detected(
    build: Callable[[int], dict[str, Any]],
) -> None:
    workflow = build(MAX_NODES)
    assert len(workflow) == MAX_NODES == 2000
    found = detect(parse(json.dumps(workflow)))
    samplers = sorted(node_id for node_id in workflow if node_id.startswith("k"))
    assert found["positive"] == [("p", "text")]
    assert found["negative"] == [("n", "text")]
    assert sorted(node_id for node_id, _ in found["seed"]) == samplers
    assert len(found["steps"]) == len(found["cfg"]) == len(samplers)
    assert requirements(workflow)[1] == (("checkpoints", "m.safetensors"),)


@pytest.mark.parametrize("build", [chain, shared_encoders], ids=["chain", "shared-encoders"])
def test_detect_stays_linear_on_a_stored_graph_beyond_the_limit(build: Callable[[int], dict[str, Any]]) -> None:
    # Templates edited without a new upload are detected again without parse(); 10,000 nodes took
    # tens of seconds when every sampler walked the chain afresh and every add() searched a list.
    found = detect(build(10_000))
    assert found["positive"] == [("p", "text")] and found["negative"] == [("n", "text")]
    assert len(found["seed"]) == len(set(found["seed"])) > 4000


def test_an_input_nested_hundreds_deep_is_refused_naming_the_node_and_input() -> None:
    with pytest.raises(
        WorkflowError, match=r"Node 1 \(SaveImage\) input 'images' is nested 700 levels deep, over the limit of 32"
    ):
        parse(hostile_input(700))
    with pytest.raises(WorkflowError, match=r"nested hundreds of levels deep, too deeply to read.*Export \(API\)"):
        parse(hostile_input(5000))  # deeper than json itself reads
    meta = '{"1": {"class_type": "SaveImage", "inputs": {}, "_meta": {"title": ' + nested(100) + "}}}"
    with pytest.raises(WorkflowError, match=r"Node 1 \(SaveImage\) field '_meta' is nested 101 levels deep"):
        parse(meta)


def test_an_input_nested_to_the_limit_is_accepted() -> None:
    assert MAX_DEPTH == 32
    workflow = parse(hostile_input(MAX_DEPTH))
    assert json.dumps(workflow["1"]["inputs"]["images"]) == nested(MAX_DEPTH)
    with pytest.raises(WorkflowError, match="nested 33 levels deep"):
        parse(hostile_input(MAX_DEPTH + 1))


def test_apply_refuses_a_stored_template_nested_too_deeply_instead_of_crashing() -> None:
    # Imported before parse() bounded nesting: deepcopy raised RecursionError at every attempt.
    value: list[Any] = []
    for _ in range(699):
        value = [value]
    workflow = {"1": node("SaveImage", images=value, filename_prefix="x")}
    with pytest.raises(WorkflowError, match=r"Node 1 \(SaveImage\) input 'images' is nested 700 levels deep"):
        apply(workflow, {"filename_prefix": [("1", "filename_prefix")]}, {"filename_prefix": "job"})


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("make", "says"),
    [
        (
            lambda: hostile_input(700),
            "Node 1 (SaveImage) input 'images' is nested 700 levels deep, over the limit of 32",
        ),
        (lambda: json.dumps(chain(10_000)), "The workflow has 10,000 nodes, over the limit of 2,000."),
    ],
    ids=["nested", "ten-thousand-nodes"],
)
def test_the_import_page_refuses_a_hostile_workflow_and_saves_nothing(
    logged_in: Client, make: Callable[[], str], says: str
) -> None:
    text = make()
    before = Template.objects.count()
    url = reverse("renders:template-import")
    for data in ({"text": text}, {"upload": SimpleUploadedFile("w.json", text.encode())}):
        answer = logged_in.post(url, {"name": "hostile", "kind": "still", **data})
        assert answer.status_code == 400
        assert says in html.unescape(answer.content.decode())
    assert Template.objects.count() == before
    assert not Template.objects.filter(name="hostile").exists()


# --- classes and files ---------------------------------------------------------------------------


def test_it_lists_the_node_classes_a_server_lacks() -> None:
    workflow = shared("validation_error_unknown_class.json")
    assert check_classes(workflow, {"SaveImage", "EmptyImage"}) == ["NoSuchNode"]
    assert check_classes(workflow, {"SaveImage", "NoSuchNode"}) == []
    assert check_classes(template("wan22-i2v")["workflow"], ["SaveVideo", "CreateVideo"]) == [
        "CLIPLoader",
        "CLIPTextEncode",
        "KSamplerAdvanced",
        "LoadImage",
        "ModelSamplingSD3",
        "UNETLoader",
        "VAEDecode",
        "VAELoader",
        "WanImageToVideo",
    ]


def test_requirements_name_each_loaders_model_folder() -> None:
    workflow = {
        "1": node("CheckpointLoaderSimple", ckpt_name="sd_xl_base_1.0.safetensors"),
        "2": node("LoraLoader", model=["1", 0], clip=["1", 1], lora_name="style.safetensors", strength_model=1.0),
        "3": node("VAELoader", vae_name="sdxl_vae.safetensors"),
        "4": node("UNETLoader", unet_name="flux1-dev.safetensors", weight_dtype="default"),
        "5": node("DualCLIPLoader", clip_name1="clip_l.safetensors", clip_name2="t5xxl.safetensors", type="flux"),
        "6": node("CLIPVisionLoader", clip_name="sigclip.safetensors"),
        "7": node("UpscaleModelLoader", model_name="4x.pth"),
        "8": node("ControlNetLoader", control_net_name="canny.safetensors"),
        "9": node("CLIPLoader", clip_name=["10", 0]),  # a linked value names no file
        "10": node("PrimitiveString", value="x"),
    }
    classes, files = requirements(workflow)
    assert classes == tuple(sorted(n["class_type"] for n in workflow.values()))
    assert files == (
        ("checkpoints", "sd_xl_base_1.0.safetensors"),
        ("clip_vision", "sigclip.safetensors"),
        ("controlnet", "canny.safetensors"),
        ("diffusion_models", "flux1-dev.safetensors"),
        ("loras", "style.safetensors"),
        ("text_encoders", "clip_l.safetensors"),
        ("text_encoders", "t5xxl.safetensors"),
        ("upscale_models", "4x.pth"),
        ("vae", "sdxl_vae.safetensors"),
    )


def test_frame_interpolation_checkpoints_are_no_model_files() -> None:
    # ComfyUI-Frame-Interpolation downloads them into its own folder; ckpt_name is no checkpoint.
    workflow = {
        "1": node("LoadVideo", file="clip.mp4"),
        "2": node("GetVideoComponents", video=["1", 0]),
        "3": node("RIFE VFI", ckpt_name="rife47.pth", frames=["2", 0], multiplier=2),
        "4": node("UpscaleModelLoader", model_name="RealESRGAN_x2plus.pth"),
        "5": node("ImageUpscaleWithModel", upscale_model=["4", 0], image=["3", 0]),
        "6": node("CreateVideo", images=["5", 0], fps=32.0),
        "7": node("SaveVideo", video=["6", 0], filename_prefix="v", format="auto", codec="auto"),
    }
    classes, files = requirements(workflow)
    assert "RIFE VFI" in classes
    assert files == (("upscale_models", "RealESRGAN_x2plus.pth"),)


def test_requirements_of_the_shared_upscale_workflow_name_the_random_model() -> None:
    classes, files = requirements(shared("progress_upscale_random_model.json"))
    assert "UpscaleModelLoader" in classes
    assert files == (("upscale_models", "random_compact_x2.safetensors"),)
    assert requirements(shared("still_image.json")) == (("EmptyImage", "SaveImage"), ())


# --- detect --------------------------------------------------------------------------------------

SHARED_DETECTED = {
    "animated_png.json": {
        "seed": [("2", "seed")],
        "width": [("1", "width")],
        "height": [("1", "height")],
        "frames": [("1", "batch_size")],
        "fps": [("3", "fps")],
        "filename_prefix": [("3", "filename_prefix")],
    },
    "animated_webp.json": {
        "seed": [("2", "seed")],
        "width": [("1", "width")],
        "height": [("1", "height")],
        "frames": [("1", "batch_size")],
        "fps": [("3", "fps")],
        "filename_prefix": [("3", "filename_prefix")],
    },
    "exec_error.json": {
        "width": [("1", "width"), ("2", "width")],
        "height": [("1", "height"), ("2", "height")],
        "filename_prefix": [("4", "filename_prefix")],
    },
    "load_uploaded_image.json": {"image": [("1", "image")], "filename_prefix": [("3", "filename_prefix")]},
    # The ImageScale's width/height resize the result; the size is set where the image is made.
    "progress_upscale_random_model.json": {
        "seed": [("2", "seed")],
        "width": [("1", "width")],
        "height": [("1", "height")],
        "filename_prefix": [("6", "filename_prefix")],
    },
    # A batch of stills sent over the socket is not a video: batch_size is not a frame count here.
    "progress_ws.json": {"seed": [("2", "seed")], "width": [("1", "width")], "height": [("1", "height")]},
    "still_image.json": {
        "width": [("1", "width")],
        "height": [("1", "height")],
        "filename_prefix": [("2", "filename_prefix")],
    },
    "still_image_slow.json": {
        "seed": [("2", "seed")],
        "width": [("1", "width")],
        "height": [("1", "height")],
        "filename_prefix": [("5", "filename_prefix")],
    },
    "validation_error.json": {"width": [("1", "width")], "height": [("1", "height")]},
    "validation_error_no_outputs.json": {"width": [("1", "width")], "height": [("1", "height")]},
    "validation_error_unknown_class.json": {"filename_prefix": [("2", "filename_prefix")]},
    "validation_partial.json": {
        "width": [("1", "width"), ("3", "width")],
        "height": [("1", "height"), ("3", "height")],
        "filename_prefix": [("2", "filename_prefix"), ("4", "filename_prefix")],
    },
    "video_mp4.json": {
        "seed": [("2", "seed")],
        "width": [("1", "width")],
        "height": [("1", "height")],
        "frames": [("1", "batch_size")],
        "fps": [("3", "fps")],
        "filename_prefix": [("4", "filename_prefix")],
    },
    "video_webm.json": {
        "seed": [("2", "seed")],
        "width": [("1", "width")],
        "height": [("1", "height")],
        "frames": [("1", "batch_size")],
        "fps": [("3", "fps")],
        "filename_prefix": [("3", "filename_prefix")],
    },
}


def test_every_shared_workflow_has_an_expected_detection() -> None:
    assert sorted(SHARED_DETECTED) == sorted(p.name for p in SHARED.glob("*.json"))


@pytest.mark.parametrize(("path", "expected"), sorted(SHARED_DETECTED.items()))
def test_it_detects_the_parameters_of_each_shared_workflow(path: str, expected: dict[str, Any]) -> None:
    assert detect(shared(path)) == expected


def test_it_finds_the_video_a_video_loader_reads() -> None:
    workflow = {
        "1": node("LoadVideo", file="clip.mp4"),
        "2": node("VHS_LoadVideo", video="other.mp4", force_rate=0, frame_load_cap=0),
        "3": node("GetVideoComponents", video=["1", 0]),
        "4": node("ImageBatch", image1=["3", 0], image2=["2", 0]),
        "5": node("CreateVideo", images=["4", 0], fps=16.0),
        "6": node("SaveVideo", video=["5", 0], filename_prefix="v", format="auto", codec="auto"),
    }
    found = detect(workflow)
    assert found["video"] == [("1", "file"), ("2", "video")]  # the linked "video" of node 3 is no file
    assert "image" not in found
    result = apply(workflow, found, {"video": "spoonfeeder/job-7_00001_.mp4 [output]"})
    assert result["1"]["inputs"]["file"] == result["2"]["inputs"]["video"] == "spoonfeeder/job-7_00001_.mp4 [output]"
    assert read(workflow, found)["video"] == "clip.mp4"


def test_it_tells_positive_from_negative_by_the_sampler_links_not_the_order() -> None:
    workflow = {
        "1": node("CheckpointLoaderSimple", ckpt_name="m.safetensors"),
        "2": node("CLIPTextEncode", "Prompt A", text="ugly", clip=["1", 1]),
        "3": node("CLIPTextEncode", "Prompt B", text="a cat", clip=["1", 1]),
        "4": node("EmptyLatentImage", width=512, height=768, batch_size=1),
        "5": node(
            "KSampler",
            model=["1", 0],
            seed=1,
            steps=20,
            cfg=7.0,
            sampler_name="euler",
            scheduler="normal",
            positive=["3", 0],
            negative=["2", 0],
            latent_image=["4", 0],
            denoise=1.0,
        ),
        "6": node("VAEDecode", samples=["5", 0], vae=["1", 2]),
        "7": node("SaveImage", images=["6", 0], filename_prefix="p"),
    }
    found = detect(workflow)
    assert found["positive"] == [("3", "text")]
    assert found["negative"] == [("2", "text")]
    assert found["seed"] == [("5", "seed")]
    assert found["steps"] == [("5", "steps")] and found["cfg"] == [("5", "cfg")]
    assert found["width"] == [("4", "width")] and found["height"] == [("4", "height")]
    assert "frames" not in found  # a still image's batch_size is not a frame count


def test_it_follows_conditioning_through_image_to_video_nodes_by_output_slot() -> None:
    found = detect(template("wan22-i2v")["workflow"])
    assert found["positive"] == [("7", "text")]
    assert found["negative"] == [("8", "text")]
    assert found["image"] == [("9", "image")]
    assert found["frames"] == [("10", "length")]
    assert found["width"] == [("10", "width")]


def test_it_follows_conditioning_through_guiders() -> None:
    found = detect(template("hunyuan15-i2v")["workflow"])
    assert found["positive"] == [("5", "text")]
    assert found["negative"] == [("6", "text")]
    assert found["seed"] == [("7", "noise_seed")]
    assert found["steps"] == [("9", "steps")]
    assert found["cfg"] == [("14", "cfg")]


def test_a_negative_made_by_zeroing_the_positive_gets_no_negative_text() -> None:
    found = detect(template("flux-still")["workflow"])
    assert found["positive"] == [("4", "text")]
    assert "negative" not in found


def test_without_a_sampler_it_falls_back_to_titles_containing_neg() -> None:
    workflow = {
        "1": node("CLIPTextEncode", "Negative Prompt", text="bad", clip=["9", 0]),
        "2": node("CLIPTextEncode", "Scene", text="good", clip=["9", 0]),
        "3": node("MyCustomSampler", cond_a=["2", 0], cond_b=["1", 0]),
        "9": node("CLIPLoader", clip_name="t5.safetensors", type="wan"),
        "10": node("SaveImage", images=["3", 0], filename_prefix="x"),
    }
    found = detect(workflow)
    assert found["positive"] == [("2", "text")]
    assert found["negative"] == [("1", "text")]


def test_it_finds_lora_loaders_and_prompt_pairs_in_one_node() -> None:
    workflow = {
        "1": node("CheckpointLoaderSimple", ckpt_name="m.safetensors"),
        "2": node(
            "LoraLoader",
            model=["1", 0],
            clip=["1", 1],
            lora_name="a.safetensors",
            strength_model=1.0,
            strength_clip=1.0,
        ),
        "3": node("LoraLoaderModelOnly", model=["2", 0], lora_name="b.safetensors", strength_model=0.5),
        "4": node("WanVideoTextEncode", positive_prompt="a cat", negative_prompt="blurry", t5=["1", 1]),
        "5": node("VHS_VideoCombine", images=["4", 0], frame_rate=16, filename_prefix="v"),
    }
    found = detect(workflow)
    assert found["loras"] == [("2", "lora_name"), ("3", "lora_name")]
    assert found["positive"] == [("4", "positive_prompt")]
    assert found["negative"] == [("4", "negative_prompt")]
    assert found["fps"] == [("5", "frame_rate")]
    assert found["filename_prefix"] == [("5", "filename_prefix")]


def test_it_finds_how_long_a_sound_is_and_the_words_a_voice_speaks() -> None:
    workflow = {
        "1": node("EmptyLatentAudio", seconds=30.0, batch_size=2),
        "2": node(
            "ConditioningStableAudio", positive=["7", 0], negative=["8", 0], seconds_start=5.0, seconds_total=30.0
        ),
        "3": node("EmptyAudio", duration=4.0, sample_rate=44100, channels=2),
        "4": node("TrimAudioDuration", audio=["3", 0], start_index=0.0, duration=2.0),
        "5": node("KokoroGenerator", text="Hello, keeper.", speaker=["6", 0], speed=1.0, lang="English"),
        "6": node("KokoroSpeaker", speaker_name="bm_george"),
        "9": node("MyPackTTS", text="Good night.", seed=7),
        "10": node("SaveAudio", audio=["4", 0], filename_prefix="film/music"),
    }
    found = detect(workflow)
    # Where a sound's length is set, not where a clip of it is cut; no frames without a video.
    assert found["seconds"] == [("1", "seconds"), ("2", "seconds_total"), ("3", "duration")]
    assert found["positive"] == [("5", "text"), ("9", "text")]
    assert found["seed"] == [("9", "seed")] and "frames" not in found
    written = apply(workflow, found, {"seconds": "12.5", "positive": "Farewell."})
    assert (written["1"]["inputs"]["seconds"], written["3"]["inputs"]["duration"]) == (12.5, 12.5)
    assert written["4"]["inputs"]["duration"] == 2.0 and written["2"]["inputs"]["seconds_start"] == 5.0
    assert written["5"]["inputs"]["text"] == written["9"]["inputs"]["text"] == "Farewell."


# --- apply ---------------------------------------------------------------------------------------

PARAMS = {
    "positive": "a lighthouse in a storm",
    "negative": "blurry",
    "seed": 1234,
    "steps": 30,
    "cfg": 5,
    "width": 640,
    "height": 368,
    "frames": 49,
    "fps": 12,
    "seconds": 12.5,
    "image": "job-7-start.png",
    "video": "spoonfeeder/job-6_00001_.mp4 [output]",
    "filename_prefix": "spoonfeeder/job-7",
}


def test_apply_writes_every_parameter_where_the_mapping_says() -> None:
    t = template("wan22-i2v")
    result = apply(t["workflow"], t["mapping"], PARAMS)
    assert result["7"]["inputs"]["text"] == "a lighthouse in a storm"
    assert result["8"]["inputs"]["text"] == "blurry"
    assert result["11"]["inputs"]["noise_seed"] == result["12"]["inputs"]["noise_seed"] == 1234
    assert result["11"]["inputs"]["steps"] == result["12"]["inputs"]["steps"] == 30
    assert result["11"]["inputs"]["cfg"] == 5.0 and isinstance(result["11"]["inputs"]["cfg"], float)
    assert (result["10"]["inputs"]["width"], result["10"]["inputs"]["height"]) == (640, 368)
    assert result["10"]["inputs"]["length"] == 49
    assert result["14"]["inputs"]["fps"] == 12.0
    assert result["9"]["inputs"]["image"] == "job-7-start.png"
    assert result["15"]["inputs"]["filename_prefix"] == "spoonfeeder/job-7"
    parse(json.dumps(result))


def test_apply_leaves_the_template_untouched() -> None:
    t = template("wan22-i2v")
    before = copy.deepcopy(t)
    result = apply(t["workflow"], t["mapping"], {**PARAMS, "seed": "random"})
    assert t == before
    assert result is not t["workflow"]
    assert result["1"] is not t["workflow"]["1"]


def test_apply_keeps_the_model_switch_at_the_same_fraction_of_the_steps() -> None:
    t = template("wan22-t2v")
    assert (t["workflow"]["10"]["inputs"]["end_at_step"], t["workflow"]["11"]["inputs"]["start_at_step"]) == (10, 10)
    result = apply(t["workflow"], t["mapping"], {"steps": 30})
    assert result["10"]["inputs"]["start_at_step"] == 0
    assert result["10"]["inputs"]["end_at_step"] == 15
    assert result["11"]["inputs"]["start_at_step"] == 15
    assert result["11"]["inputs"]["end_at_step"] == 10000


@pytest.mark.parametrize("seed", ["random", -1])
def test_apply_picks_a_fresh_seed_for_random(seed: str | int) -> None:
    t = template("sdxl-still")
    seeds = {apply(t["workflow"], t["mapping"], {"seed": seed})["5"]["inputs"]["seed"] for _ in range(5)}
    assert len(seeds) > 1
    assert all(isinstance(s, int) and 0 <= s < 2**53 for s in seeds)


def test_apply_keeps_what_is_not_given() -> None:
    t = template("sdxl-still")
    assert apply(t["workflow"], t["mapping"], {}) == t["workflow"]
    assert apply(t["workflow"], t["mapping"], {"seed": None, "negative": None}) == t["workflow"]
    assert apply(t["workflow"], t["mapping"], {"unknown": 3}) == t["workflow"]


def test_apply_sets_lora_names_and_strengths_in_loader_order() -> None:
    workflow = {
        "1": node("CheckpointLoaderSimple", ckpt_name="m.safetensors"),
        "2": node(
            "LoraLoader",
            model=["1", 0],
            clip=["1", 1],
            lora_name="a.safetensors",
            strength_model=1.0,
            strength_clip=1.0,
        ),
        "3": node("LoraLoaderModelOnly", model=["2", 0], lora_name="b.safetensors", strength_model=1.0),
        "4": node("SaveImage", images=["3", 0], filename_prefix="x"),
    }
    mapping = detect(workflow)
    result = apply(
        workflow, mapping, {"loras": [{"name": "ink.safetensors", "strength": 0.7}, ("film.safetensors", 0.4)]}
    )
    assert result["2"]["inputs"] == {
        **workflow["2"]["inputs"],
        "lora_name": "ink.safetensors",
        "strength_model": 0.7,
        "strength_clip": 0.7,
    }
    assert result["3"]["inputs"]["lora_name"] == "film.safetensors"
    assert result["3"]["inputs"]["strength_model"] == 0.4
    only_name = apply(workflow, mapping, {"loras": ["ink.safetensors"]})
    assert only_name["2"]["inputs"]["lora_name"] == "ink.safetensors"
    assert only_name["2"]["inputs"]["strength_model"] == 1.0
    assert only_name["3"] == workflow["3"]
    with pytest.raises(WorkflowError, match="3 LoRAs were given but the template has 2 LoRA loader"):
        apply(workflow, mapping, {"loras": ["a", "b", "c"]})
    with pytest.raises(WorkflowError, match="1 LoRA was given but the template has 0 LoRA loader nodes"):
        apply(shared("still_image.json"), detect(shared("still_image.json")), {"loras": ["ink.safetensors"]})


def test_apply_refuses_a_mapping_that_points_at_a_missing_node() -> None:
    with pytest.raises(WorkflowError, match="The seed mapping points at 99/seed, which is not in the workflow"):
        apply(shared("still_image.json"), {"seed": [("99", "seed")]}, {"seed": 1})


def test_apply_accepts_a_mapping_read_back_from_json() -> None:
    workflow = shared("video_mp4.json")
    mapping = json.loads(json.dumps(detect(workflow)))  # tuples become lists in a JSONField
    result = apply(workflow, mapping, {"frames": 8, "fps": 8, "width": 128, "height": 128})
    assert result["1"]["inputs"]["batch_size"] == 8
    assert result["3"]["inputs"]["fps"] == 8.0
    assert workflow["1"]["inputs"]["batch_size"] == 24


# --- settings ------------------------------------------------------------------------------------


def test_good_settings_have_no_errors() -> None:
    good = {"width": 832, "height": 480, "frames": 81, "fps": 16, "steps": 20, "cfg": 3.5, "seed": 2**64 - 1}
    assert validate_settings(good) == {}
    assert validate_settings({"seed": "random"}) == {}
    assert validate_settings({"seed": -1, "width": "1024", "cfg": "0"}) == {}
    assert validate_settings({"seed": str(2**64 - 1), "fps": "23.976"}) == {}
    assert validate_settings({"width": None, "seed": ""}) == {}
    assert validate_settings({"seconds": 47.5}) == validate_settings({"seconds": "600"}) == {}


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("width", 0, "Width must be between 64 and 8192; got 0."),
        ("width", 8200, "Width must be between 64 and 8192; got 8200."),
        ("height", 500, "Height must be a multiple of 8 (try 496)."),
        ("height", 480.5, "Height must be a whole number, not 480.5."),
        ("width", "wide", "Width must be a whole number, not 'wide'."),
        ("frames", 0, "Frames must be between 1 and 1024; got 0."),
        ("frames", 1025, "Frames must be between 1 and 1024; got 1025."),
        ("fps", 0.5, "Fps must be between 1 and 120; got 0.5."),
        ("fps", 121, "Fps must be between 1 and 120; got 121."),
        ("seconds", 0.5, "Seconds must be between 1 and 600; got 0.5."),
        ("seconds", "long", "Seconds must be a number, not 'long'."),
        ("steps", 0, "Steps must be between 1 and 200; got 0."),
        ("steps", 201, "Steps must be between 1 and 200; got 201."),
        ("cfg", -0.1, "CFG must be between 0 and 30; got -0.1."),
        ("cfg", 30.5, "CFG must be between 0 and 30; got 30.5."),
        ("cfg", True, "CFG must be a number, not True."),
        ("seed", -2, "Seed must be between 0 and 18446744073709551615; got -2."),
        ("seed", 2**64, "Seed must be between 0 and 18446744073709551615; got 18446744073709551616."),
        ("seed", "lucky", "Seed must be a whole number or \"random\", not 'lucky'."),
    ],
)
def test_settings_out_of_range_are_refused_with_the_field(field: str, value: Any, message: str) -> None:
    assert validate_settings({field: value}) == {field: message}


def test_settings_limits_cover_every_validated_field() -> None:
    assert set(SETTINGS_LIMITS) == {"width", "height", "frames", "fps", "seconds", "steps", "cfg", "seed"}
    assert SETTINGS_LIMITS["width"] == (64, 8192)


# --- shipped templates ---------------------------------------------------------------------------

SHIPPED = shipped()


ROLES = {"keyframe", "t2v", "i2v", "upscale", "interp", "speech", "music"}
# Places a shipped mapping names that detect() does not find: corrected by hand, as a user would.
HAND_PLACED = {"test-i2v": {"frames": [("3", "amount")]}}


def test_the_shipped_templates_cover_every_family() -> None:
    names = {t["name"] for t in SHIPPED}
    assert {"holocine-t2v", "wan22-t2v", "wan22-i2v", "hunyuan15-t2v", "hunyuan15-i2v", "sdxl-still"} <= names
    assert {"upscale-realesrgan", "interp-rife"} <= names
    assert {"music-stable-audio", "tts-kokoro", "test-music", "test-speech"} <= names
    assert {"test-still-image", "test-animated-webp", "test-video-mp4", "test-still-image-slow"} <= names
    assert len(names) == len(SHIPPED)


def test_every_step_of_the_render_graph_has_a_real_and_a_model_free_template() -> None:
    real = {t["role"] for t in SHIPPED if "role" in t and t["kind"] != "test"}
    model_free = {t["role"] for t in SHIPPED if "role" in t and t["kind"] == "test"}
    assert real == model_free == ROLES
    assert {t["name"]: t["role"] for t in SHIPPED if "role" in t and t["kind"] == "test"} == {
        "test-still-image": "keyframe",
        "test-video-prompt": "t2v",
        "test-i2v": "i2v",
        "test-upscale": "upscale",
        "test-interp": "interp",
        "test-speech": "speech",
        "test-music": "music",
    }


@pytest.mark.parametrize("t", SHIPPED, ids=lambda t: t["name"])
def test_each_shipped_template_parses_and_states_what_it_needs(t: dict[str, Any]) -> None:
    assert set(t) - {"role"} == {"name", "description", "kind", "needs", "workflow", "mapping"}
    assert t.get("role", "keyframe") in ROLES
    assert (SHIPPED_DIR / f"{t['name']}.json").is_file()
    assert t["kind"] in {"still", "t2v", "i2v", "upscale", "interp", "audio", "test"}
    assert parse(json.dumps(t["workflow"])) == t["workflow"]
    classes, files = requirements(t["workflow"])
    assert set(classes) <= set(t["needs"]["classes"])
    assert sorted(t["needs"]["classes"]) == list(classes)
    assert sorted((folder, f) for folder, names in t["needs"]["files"].items() for f in names) == list(files)
    assert isinstance(t["needs"]["custom_nodes"], list)


@pytest.mark.parametrize("t", SHIPPED, ids=lambda t: t["name"])
def test_each_shipped_mapping_is_what_detect_finds_and_takes_settings(t: dict[str, Any]) -> None:
    assert t["mapping"] == {**detect(t["workflow"]), **HAND_PLACED.get(t["name"], {})}
    role = t.get("role")
    assert "filename_prefix" in t["mapping"]
    if role in {"upscale", "interp"}:
        # They take a finished video and keep its size; the caller sets the frame rate.
        assert set(t["mapping"]) == {"video", "fps", "filename_prefix"}
    elif role == "speech":
        # The words are the prompt; the real voice is as long as they take, the silent stand-in
        # as long as the caller says.
        assert set(t["mapping"]) == {"positive", "filename_prefix"} | ({"seconds"} if t["kind"] == "test" else set())
    elif role == "music":
        assert {"positive", "seconds", "filename_prefix"} <= set(t["mapping"])
    else:
        assert {"width", "height"} <= set(t["mapping"])
    if t["kind"] not in {"test", "upscale", "interp", "audio"} or t["name"] == "music-stable-audio":
        assert {"positive", "seed", "steps", "cfg"} <= set(t["mapping"])
    if t["kind"] in {"t2v", "i2v"}:
        assert {"negative", "frames", "fps"} <= set(t["mapping"])
    if role == "i2v":
        assert {"image", "frames", "fps"} <= set(t["mapping"])
    params = {key: PARAMS[key] for key in t["mapping"] if key in PARAMS}
    result = apply(t["workflow"], t["mapping"], params)
    for key, places in t["mapping"].items():
        for node_id, input_name in places:
            assert result[node_id]["inputs"][input_name] == params[key]


@pytest.mark.parametrize(
    ("name", "path"),
    [
        ("test-still-image", "still_image.json"),
        ("test-still-image-slow", "still_image_slow.json"),
        ("test-animated-webp", "animated_webp.json"),
        ("test-video-mp4", "video_mp4.json"),
    ],
)
def test_the_model_free_test_templates_are_the_shared_workflows(name: str, path: str) -> None:
    t = template(name)
    assert t["kind"] == "test"
    assert t["workflow"] == shared(path)
    assert t["needs"]["files"] == {} and t["needs"]["custom_nodes"] == []


@pytest.mark.parametrize("t", SHIPPED, ids=lambda t: t["name"])
def test_each_shipped_mapping_points_at_inputs_its_nodes_have(t: dict[str, Any]) -> None:
    declared = comfyui_nodes.classes(default_models(), [])  # what the simulated node knows, with inputs
    for name, places in t["mapping"].items():
        for node_id, input_name in places:
            inputs = t["workflow"][node_id]["inputs"]
            assert input_name in inputs and not isinstance(inputs[input_name], list), (name, node_id, input_name)
            spec = declared.get(t["workflow"][node_id]["class_type"])
            if spec:
                assert input_name in {**spec["input"]["required"], **spec["input"].get("optional", {})}


def test_the_upscale_and_interpolation_templates_say_what_they_need() -> None:
    upscale, interp = template("upscale-realesrgan"), template("interp-rife")
    assert (upscale["kind"], interp["kind"]) == ("upscale", "interp")
    assert upscale["needs"]["files"] == {"upscale_models": ["RealESRGAN_x2plus.pth"]}
    assert "Real-ESRGAN" in upscale["description"] and upscale["needs"]["custom_nodes"] == []
    # The RIFE checkpoint is the custom node's own download, not a file of a model folder.
    assert interp["needs"]["files"] == {} and interp["needs"]["custom_nodes"] == ["ComfyUI-Frame-Interpolation"]
    assert "RIFE VFI" in interp["needs"]["classes"]
    rife = next(n["inputs"] for n in interp["workflow"].values() if n["class_type"] == "RIFE VFI")
    assert (rife["ckpt_name"], rife["multiplier"]) == ("rife47.pth", 2)
    assert "stand-in" in template("test-interp")["description"]


def test_the_video_templates_need_their_model_files() -> None:
    assert template("wan22-i2v")["needs"]["files"] == {
        "diffusion_models": [
            "wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors",
            "wan2.2_i2v_low_noise_14B_fp8_scaled.safetensors",
        ],
        "text_encoders": ["umt5_xxl_fp8_e4m3fn_scaled.safetensors"],
        "vae": ["wan_2.1_vae.safetensors"],
    }
    assert template("hunyuan15-i2v")["needs"]["files"]["clip_vision"] == ["sigclip_vision_patch14_384.safetensors"]
    assert "HunyuanVideo15ImageToVideo" in template("hunyuan15-i2v")["needs"]["classes"]


def test_a_text_box_titled_as_a_prompt_is_where_the_prompt_goes() -> None:
    workflow = {
        "1": {"class_type": "PrimitiveStringMultiline", "inputs": {"value": "a cat"}, "_meta": {"title": "Prompt"}},
        "2": {"class_type": "PrimitiveString", "inputs": {"value": "blur"}, "_meta": {"title": "Negative prompt"}},
        "3": {"class_type": "PrimitiveString", "inputs": {"value": "x"}, "_meta": {"title": "File name"}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"text": ["1", 0], "clip": ["9", 1]}},
    }
    found = detect(workflow)
    assert (found["positive"], found["negative"]) == ([("1", "value")], [("2", "value")])
    assert read(workflow, found)["positive"] == "a cat"


def test_the_music_and_speech_templates_say_what_they_need() -> None:
    music, voice = template("music-stable-audio"), template("tts-kokoro")
    assert (music["kind"], music["role"], voice["kind"], voice["role"]) == ("audio", "music", "audio", "speech")
    assert music["needs"]["files"] == {
        "checkpoints": ["stable_audio_open_1.0.safetensors"],
        "text_encoders": ["t5_base.safetensors"],
    }
    assert music["needs"]["seconds"] == {"max": 47}  # what Stable Audio Open was trained to make
    assert read(music["workflow"], music["mapping"])["seconds"] == 30.0
    # Kokoro downloads its model into the pack's own folder: no model file of ComfyUI's.
    assert voice["needs"]["files"] == {} and voice["needs"]["custom_nodes"] == ["comfyui-kokoro"]
    assert {"KokoroGenerator", "KokoroSpeaker"} <= set(voice["needs"]["classes"])
    for name in ("test-music", "test-speech"):
        stand_in = template(name)
        assert stand_in["needs"] == {
            "classes": ["EmptyAudio", "PrimitiveStringMultiline", "SaveAudio"],
            "files": {},
            "custom_nodes": [],
        }
        assert "silence" in stand_in["description"] and "no model" in stand_in["description"]


# --- the render graph on a simulated node ---------------------------------------------------------


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[SimComfyUI]:
    with SimComfyUI("127.0.50.23", root=tmp_path / "sim", seconds_per_node=0.005, max_side=64) as server:
        yield server


def render(sim: SimComfyUI, name: str, **params: Any) -> FileRef:
    """The one file a shipped template makes on the node with these settings."""
    t = template(name)
    prompt_id = uuid.uuid4().hex
    with ComfyUI(sim.url) as client:
        client.submit(apply(t["workflow"], t["mapping"], params), prompt_id=prompt_id, client_id="graph")
        entry = ended(client, prompt_id)
    assert succeeded(entry), failure(entry)
    (made,) = outputs_of(entry)
    return made


def on_the_node(made: FileRef) -> str:
    """How a later job's LoadImage or LoadVideo names an earlier job's output: no upload."""
    return f"{made['subfolder']}/{made['filename']} [output]"


def video(sim: SimComfyUI, made: FileRef) -> tuple[int, tuple[int, int], float]:
    """Frames, size and frame rate of a video the node made, read back from its /view."""
    with ComfyUI(sim.url) as client, av.open(io.BytesIO(client.view(**made)), "r") as container:
        stream = container.streams.video[0]
        frames = [frame.to_image() for frame in container.decode(stream)]
        return len(frames), frames[0].size, float(stream.average_rate or 0)


def test_the_model_free_graph_runs_from_a_keyframe_to_an_interpolated_video_on_one_node(sim: SimComfyUI) -> None:
    keyframe = render(sim, "test-still-image", width=64, height=48, filename_prefix="graph/keyframe")
    settings = {"width": 32, "height": 16, "frames": 6, "fps": 12, "seed": 3}
    clip = render(sim, "test-i2v", image=on_the_node(keyframe), filename_prefix="graph/clip", **settings)
    assert video(sim, clip) == (6, (32, 16), 12.0)
    bigger = render(sim, "test-upscale", video=on_the_node(clip), fps=12, filename_prefix="graph/bigger")
    assert video(sim, bigger) == (6, (64, 32), 12.0)
    smoother = render(sim, "test-interp", video=on_the_node(bigger), fps=24, filename_prefix="graph/smoother")
    assert video(sim, smoother) == (12, (64, 32), 24.0)  # twice the frames at twice the rate: as long
    assert sim.uploaded == []  # every step read the previous one's output where the node saved it


def test_the_upscale_and_rife_templates_run_where_the_model_and_the_custom_nodes_are(sim: SimComfyUI) -> None:
    sim.knobs.models = {**default_models(), "upscale_models": ["RealESRGAN_x2plus.pth"]}
    source = render(sim, "test-video-mp4", width=32, height=16, frames=5, fps=16, filename_prefix="graph/source")
    bigger = render(sim, "upscale-realesrgan", video=on_the_node(source), fps=16, filename_prefix="graph/bigger")
    assert video(sim, bigger) == (5, (64, 32), 16.0)
    smoother = render(sim, "interp-rife", video=on_the_node(bigger), fps=32, filename_prefix="graph/smoother")
    assert video(sim, smoother) == (9, (64, 32), 32.0)  # an in-between after every frame but the last
    # A node without ComfyUI-Frame-Interpolation lacks the class, and says so.
    sim.knobs.custom_nodes = []
    interp = template("interp-rife")
    with ComfyUI(sim.url) as client:
        assert check_classes(interp["workflow"], client.object_info()) == ["RIFE VFI"]
        with pytest.raises(WorkflowRejected, match="RIFE VFI"):
            client.submit(interp["workflow"], prompt_id=uuid.uuid4().hex, client_id="graph")


def render_sound(sim: SimComfyUI, name: str, **params: Any) -> tuple[float, int, int, bool]:
    """Seconds, sample rate, channels and whether anything is heard, of the one FLAC a shipped
    template makes on the node with these settings (read back from its /view)."""
    t = template(name)
    prompt_id = uuid.uuid4().hex
    with ComfyUI(sim.url) as client:
        client.submit(apply(t["workflow"], t["mapping"], params), prompt_id=prompt_id, client_id="film")
        entry = ended(client, prompt_id)
        assert succeeded(entry), failure(entry)
        # ComfyUI's SaveAudio lists its file under "audio".
        outputs: dict[str, Any] = dict(entry["outputs"])
        ((made,),) = [output["audio"] for output in outputs.values()]
        assert made["filename"].endswith(".flac")
        data = client.view(**made)
    with av.open(io.BytesIO(data), "r") as container:
        stream = container.streams.audio[0]
        frames = list(container.decode(stream))
        heard = any(any(bytes(plane)) for frame in frames for plane in frame.planes)
        return sum(frame.samples for frame in frames) / stream.rate, stream.rate, stream.channels, heard


def test_the_film_gets_music_and_speech_from_a_node_with_their_models(sim: SimComfyUI) -> None:
    seconds, rate, channels, heard = render_sound(
        sim, "music-stable-audio", positive="sea shanty", seconds=6, seed=3, steps=2, filename_prefix="film/music"
    )
    assert (rate, channels, heard) == (44100, 2, True)
    assert seconds == pytest.approx(6, abs=0.05)  # in whole latent frames of 2048 samples
    line = "The keeper climbed the stairs one last time."
    seconds, rate, channels, heard = render_sound(sim, "tts-kokoro", positive=line, filename_prefix="film/line")
    assert (rate, channels, heard) == (24000, 1, True)
    assert seconds == pytest.approx(len(line) * 0.07)  # the simulated voice's pace
    # A node without comfyui-kokoro lacks its classes, and says so.
    sim.knobs.custom_nodes = []
    with ComfyUI(sim.url) as client:
        assert check_classes(template("tts-kokoro")["workflow"], client.object_info()) == [
            "KokoroGenerator",
            "KokoroSpeaker",
        ]


@pytest.mark.parametrize(("name", "rate", "channels"), [("test-music", 44100, 2), ("test-speech", 24000, 1)])
def test_the_model_free_music_and_speech_are_silence_as_long_as_asked(
    sim: SimComfyUI, name: str, rate: int, channels: int
) -> None:
    sim.knobs.models = {}  # no model at all
    sim.knobs.custom_nodes = []
    made = render_sound(sim, name, positive="a storm at sea", seconds=2.5, filename_prefix=f"film/{name}")
    assert made == (2.5, rate, channels, False)
