import pytest
import torch
from diffusers import StableDiffusionPipeline

from texforce.bases.loading import add_lora, load_pipeline, prepare_pipeline, text_encoders
from texforce.bases.sd import BUILT_IN, build_sd_pipeline, build_sdxl_pipeline, build_tiny_pipeline
from texforce.config import LoraConfig, ModelConfig
from texforce.errors import TexforceError


def test_missing_hub_model_is_one_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(TexforceError, match=r"hf download no-org/no-model") as error:
        load_pipeline("no-org/no-model")
    assert "\n" not in str(error.value) and "cache" in str(error.value)


def test_folder_that_is_not_a_pipeline(tmp_path):
    with pytest.raises(TexforceError, match=r"no model_index\.json"):
        load_pipeline(str(tmp_path))


def test_local_folder_loads_frozen_in_fp32_on_cpu(tiny_model_dir):
    pipe = prepare_pipeline(ModelConfig(base=str(tiny_model_dir), dtype="bf16"), torch.device("cpu"))
    assert pipe.unet.dtype == torch.float32 and type(pipe.scheduler).__name__ == "DDIMScheduler"
    assert not any(p.requires_grad for m in (pipe.unet, pipe.vae, pipe.text_encoder) for p in m.parameters())


def test_pipeline_loads_straight_into_its_dtype_or_on_meta(tiny_model_dir, monkeypatch):
    """bf16 weights (a GPU's frozen dtype) are read from the files into bf16, not into an fp32 copy cast afterwards
    (the same values); the meta pipeline, which checks and fuses adapters, holds no weights at all."""
    asked = []
    loader = StableDiffusionPipeline.from_pretrained.__func__
    monkeypatch.setattr(
        StableDiffusionPipeline,
        "from_pretrained",
        classmethod(lambda cls, *args, **kwargs: asked.append(kwargs["dtype"]) or loader(cls, *args, **kwargs)),
    )
    half, full = load_pipeline(str(tiny_model_dir), dtype=torch.bfloat16), load_pipeline(str(tiny_model_dir))
    assert asked == [torch.bfloat16, torch.float32]
    for name in ("unet", "vae", "text_encoder"):
        pairs = zip(getattr(half, name).parameters(), getattr(full, name).parameters(), strict=True)
        assert all(a.dtype == torch.bfloat16 and torch.equal(a, b.to(torch.bfloat16)) for a, b in pairs)
    for base in (str(tiny_model_dir), "texforce/tiny-sdxl-random"):
        meta = load_pipeline(base, meta=True)
        models = [meta.unet, meta.vae, *text_encoders(meta).values()]
        assert all(p.device.type == "meta" for m in models for p in m.parameters())
        assert type(meta.scheduler).__name__ == "DDIMScheduler" and meta.tokenizer("a cat").input_ids[0] == 49406


def test_lora_is_fp32_seeded_and_on_every_attention_projection():
    pipes = [build_tiny_pipeline(image_size=32) for _ in range(2)]
    params = [add_lora(p.text_encoder, LoraConfig(), seed=7) for p in pipes]
    assert all(p.dtype == torch.float32 for p in params[0])
    assert all(torch.equal(a, b) for a, b in zip(*params, strict=True))
    layers = pipes[0].text_encoder.config.num_hidden_layers
    assert len(params[0]) == layers * 4 * 2  # q, k, v, out × (A, B)
    with pytest.raises(TexforceError, match=r"cannot add LoRA to UNet2DConditionModel: .*nothing_here.* not found"):
        add_lora(pipes[1].unet, LoraConfig(target_modules=["nothing_here"]), seed=0)


@pytest.mark.parametrize(
    "architecture, unet, text, vae",
    [("sd15", 859_520_964, 123_060_480, 83_653_863), ("sd21", 865_910_724, 340_387_840, 83_653_863)],
)
def test_random_sd_architectures_have_the_published_sizes(architecture, unet, text, vae):
    with torch.device("meta"):
        pipe = build_sd_pipeline(architecture)
    counts = [sum(p.numel() for p in m.parameters()) for m in (pipe.unet, pipe.text_encoder, pipe.vae)]
    assert counts == [unet, text, vae]
    assert pipe.scheduler.config.prediction_type == ("v_prediction" if architecture == "sd21" else "epsilon")


def test_random_sdxl_has_the_published_sizes():
    """SDXL 1.0 base: U-Net 2,567,463,684; CLIP ViT-L 123,060,480; OpenCLIP bigG + projection 694,659,840;
    VAE 83,653,863 (the parameter counts of stabilityai/stable-diffusion-xl-base-1.0's components)."""
    with torch.device("meta"):
        pipe = build_sdxl_pipeline()
    parts = (pipe.unet, pipe.text_encoder, pipe.text_encoder_2, pipe.vae)
    assert [sum(p.numel() for p in m.parameters()) for m in parts] == [
        2_567_463_684, 123_060_480, 694_659_840, 83_653_863
    ]  # fmt: skip
    assert pipe.unet.config.cross_attention_dim == 768 + 1280 and pipe.vae.config.scaling_factor == 0.13025
    assert pipe.tokenizer_2.pad_token == "!" and pipe.tokenizer.pad_token == "<|endoftext|>"


def test_built_in_names_and_foreign_pipelines(tmp_path):
    assert {"texforce/tiny-random", "texforce/tiny-sdxl-random", "texforce/sdxl-random"} <= BUILT_IN.keys()
    assert type(load_pipeline("texforce/tiny-sd3-random")).__name__ == "StableDiffusion3Pipeline"
    assert type(load_pipeline("texforce/tiny-sdxl-random")).__name__ == "StableDiffusionXLPipeline"
    (tmp_path / "model_index.json").write_text('{"_class_name": "KandinskyV22Pipeline"}')
    with pytest.raises(TexforceError, match=r"texforce trains StableDiffusionPipeline and .* this one is a Kandinsky"):
        load_pipeline(str(tmp_path))
