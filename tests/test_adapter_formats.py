"""Adapters in the kohya (UIs), diffusers and PEFT layouts: the key layout of each base, exact round trips, stock
diffusers loading the kohya file as it loads the diffusers file, and alpha != rank scaling alike in every format."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from texforce.adapters.conversion import adapter_set_of, convert_adapter, read_adapters
from texforce.adapters.files import load_text_adapters, save_adapters
from texforce.adapters.formats import UNDERSCORED, canonical_path, dotted_path, kohya_state
from texforce.bases.flow import build_tiny_flux_pipeline, build_tiny_sd3_pipeline
from texforce.bases.loading import add_lora, text_encoders
from texforce.bases.sd import build_tiny_pipeline, build_tiny_sdxl_pipeline
from texforce.cli.main import main
from texforce.config import T5_LORA_TARGETS, LoraConfig, UNetLoraConfig
from texforce.errors import TexforceError

TEXT = LoraConfig(rank=16, alpha=8.0)  # alpha != rank: a UI that ignored alpha would apply twice the update
T5 = LoraConfig(rank=16, alpha=8.0, target_modules=list(T5_LORA_TARGETS))
UNET = UNetLoraConfig(use=True, rank=4, alpha=2.0)
BUILDERS = {
    "sd": build_tiny_pipeline,
    "sdxl": build_tiny_sdxl_pipeline,
    "sd3": build_tiny_sd3_pipeline,
    "flux": build_tiny_flux_pipeline,
}
# The project's key-layout table, measured on the tiny models (2 CLIP layers, 2 T5 blocks, q/k/v/out targets; the
# tiny U-Nets' 32 (SD) and 64 (SDXL) attention projections): (base, format) → (number of keys, one key). A
# CLIPTextModel's PEFT folder holds each key twice (with and without `text_model.`, for transformers 4 and 5).
LAYOUTS = {
    ("sd", "kohya"): (3 * (8 + 32), "lora_te_text_model_encoder_layers_0_self_attn_q_proj.alpha"),
    ("sd", "diffusers"): (
        2 * (8 + 32),
        "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.processor.to_out_lora.up.weight",
    ),
    ("sd", "peft"): (
        2 * (2 * 8 + 32),
        "text_encoder/base_model.model.text_model.encoder.layers.1.self_attn.v_proj.lora_B.weight",
    ),
    ("sdxl", "kohya"): (3 * (8 + 8 + 64), "lora_te2_text_model_encoder_layers_1_self_attn_out_proj.lora_down.weight"),
    ("sdxl", "diffusers"): (
        2 * (8 + 8 + 64),
        "text_encoder_2.text_model.encoder.layers.0.self_attn.k_proj.lora_linear_layer.up.weight",
    ),
    ("sdxl", "peft"): (
        2 * (2 * 8 + 8 + 64),
        "unet/base_model.model.up_blocks.0.attentions.1.transformer_blocks.0.attn2.to_v.lora_A.weight",
    ),
    ("sd3", "kohya"): (3 * (8 + 8 + 8), "lora_te3_encoder_block_1_layer_0_SelfAttention_o.alpha"),
    ("sd3", "diffusers"): (
        2 * (8 + 8),
        "text_encoder.text_model.encoder.layers.1.self_attn.q_proj.lora_linear_layer.down.weight",
    ),
    ("sd3", "peft"): (
        2 * (8 + 8 + 8),
        "text_encoder_3/base_model.model.encoder.block.0.layer.0.SelfAttention.q.lora_A.weight",
    ),
    ("flux", "kohya"): (3 * (8 + 8), "lora_te2_encoder_block_0_layer_0_SelfAttention_k.lora_up.weight"),
    ("flux", "diffusers"): (
        2 * 8,
        "text_encoder.text_model.encoder.layers.0.self_attn.out_proj.lora_linear_layer.up.weight",
    ),
    ("flux", "peft"): (
        2 * (2 * 8 + 8),
        "text_encoder/base_model.model.encoder.layers.0.self_attn.q_proj.lora_A.weight",
    ),
}


def trained(kind: str, seed: int = 1):
    """A tiny pipeline of `kind` with every adapter texforce trains on it (CLIPs, T5, SD/SDXL U-Net), B non-zero."""
    pipe = BUILDERS[kind](image_size=32)
    modules = {}
    for index, (name, encoder) in enumerate(text_encoders(pipe).items()):
        add_lora(encoder, T5 if type(encoder).__name__ == "T5EncoderModel" else TEXT, seed + index)
        modules[name] = encoder
    if kind in ("sd", "sdxl"):
        add_lora(pipe.unet, UNET, seed + 9)
        modules["unet"] = pipe.unet
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in modules.values():
            for name, param in module.named_parameters():
                if "lora_B" in name:
                    param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    return pipe, modules


@pytest.fixture(scope="module", params=list(BUILDERS))
def saved(request, tmp_path_factory):
    kind = request.param
    pipe, modules = trained(kind)
    folder = tmp_path_factory.mktemp(f"{kind}_lora")
    save_adapters(folder, modules, f"texforce/tiny-{kind}", pipeline_class=type(pipe), ui_name=kind)
    return kind, pipe, modules, folder


def keys_of(folder, kind: str) -> dict[str, list[str]]:
    peft = [f"{p.parent.name}/{k}" for p in sorted(folder.glob("*/adapter_model.safetensors")) for k in load_file(p)]
    return {
        "kohya": list(load_file(folder / f"{kind}.safetensors")),
        "diffusers": list(load_file(folder / "pytorch_lora_weights.safetensors")),
        "peft": peft,
    }


def embeds(pipe, prompt: str = "a photo of a cat") -> dict[str, torch.Tensor]:
    """Each text encoder's last hidden state of `prompt`."""
    result = {}
    for name, encoder in text_encoders(pipe).items():
        tokenizer = getattr(pipe, name.replace("text_encoder", "tokenizer"))
        ids = tokenizer([prompt], padding="max_length", max_length=32, truncation=True, return_tensors="pt")
        with torch.no_grad():
            result[name] = encoder(ids.input_ids)[0]
    return result


def unet_out(pipe) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 4, 4, 4, generator=generator)
    context = torch.randn(1, 77, pipe.unet.config.cross_attention_dim, generator=generator)
    extra = {}
    if pipe.unet.config.addition_embed_type == "text_time":
        pooled = pipe.text_encoder_2.config.projection_dim
        text_embeds = torch.randn(1, pooled, generator=generator)
        extra = {"added_cond_kwargs": {"text_embeds": text_embeds, "time_ids": torch.zeros(1, 6)}}
    with torch.no_grad():
        return pipe.unet(latents, 10, encoder_hidden_states=context, **extra).sample


def test_key_layout_table(saved):
    kind, _, _, folder = saved
    for fmt, keys in keys_of(folder, kind).items():
        count, example = LAYOUTS[kind, fmt]
        assert (len(keys), example in keys) == (count, True), (kind, fmt, len(keys), keys[:3])


def test_kohya_file_has_alpha_and_the_header(saved):
    kind, _, modules, folder = saved
    with safe_open(folder / f"{kind}.safetensors", "pt") as handle:
        header = handle.metadata()
        alphas = {k: handle.get_tensor(k) for k in handle.keys() if k.endswith(".alpha")}  # noqa: SIM118
    assert alphas and all(a.dim() == 0 for a in alphas.values())
    assert {a.item() for a in alphas.values()} == ({8.0, 2.0} if "unet" in modules else {8.0})
    assert header["texforce.base"] == f"texforce/tiny-{kind}" and header["texforce.version"]
    assert json.loads(header["texforce.rank"]) == {c: (4 if c == "unet" else 16) for c in modules}
    assert set(json.loads(header["texforce.modules"])) == set(modules)


def test_kohya_update_is_alpha_over_rank_times_up_down(saved):
    """What a UI applies at strength 1.0 (alpha / rank · up @ down) is the trained update, module by module."""
    kind, _, modules, folder = saved
    tensors = load_file(folder / f"{kind}.safetensors")
    adapters = read_adapters(folder / f"{kind}.safetensors")
    for component, module in modules.items():
        layers = dict(module.named_modules())
        for path, lora in adapters.components[component].items():
            layer = layers.get(path) or layers[path.removeprefix("text_model.")]
            delta = (lora.alpha / lora.rank) * lora.up @ lora.down
            if delta.dim() != layer.get_delta_weight("default").dim():
                delta = delta.view_as(layer.get_delta_weight("default"))
            torch.testing.assert_close(delta, layer.get_delta_weight("default"), atol=1e-6, rtol=1e-5)
    assert len(tensors) == 3 * sum(len(m) for m in adapters.components.values())


def test_kohya_diffusers_kohya_round_trip_is_exact(saved, tmp_path):
    kind, _, _, folder = saved
    first = folder / f"{kind}.safetensors"
    convert_adapter(first, "diffusers", tmp_path / "diffusers")
    convert_adapter(tmp_path / "diffusers", "peft", tmp_path / "peft")
    convert_adapter(tmp_path / "peft", "kohya", tmp_path / "back.safetensors")
    before, after = load_file(first), load_file(tmp_path / "back.safetensors")
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_every_format_loads_to_the_trained_embeddings(saved, tmp_path):
    """alpha != rank scales alike: texforce's loader on the kohya, diffusers and PEFT exports gives the trained
    encoders' outputs (T5 included)."""
    kind, pipe, _, folder = saved
    expected = embeds(pipe)
    for fmt, output in (("kohya", "a.safetensors"), ("diffusers", "d"), ("peft", "p")):
        path = convert_adapter(folder, fmt, tmp_path / output)
        fresh = BUILDERS[kind](image_size=32)
        loaded = load_text_adapters(fresh, path if fmt != "kohya" else _as_peft(path, tmp_path / f"{fmt}_peft"))
        assert set(loaded) == {n for n in expected if n in read_adapters(folder).components}
        for name, value in embeds(fresh).items():
            torch.testing.assert_close(value, expected[name], atol=1e-6, rtol=0, msg=f"{kind} {fmt} {name}")


def _as_peft(kohya, folder):
    return convert_adapter(kohya, "peft", folder)


@pytest.mark.parametrize("kind", ["sd", "sdxl", "flux"])
def test_stock_diffusers_reads_the_kohya_file_as_the_diffusers_file(kind, tmp_path):
    """`pipe.load_lora_weights` (diffusers converts kohya keys for SD, SDXL and FLUX): the same text embeddings
    (and U-Net output) from the kohya file as from the diffusers file, both equal to the trained model's."""
    pipe, modules = trained(kind)
    save_adapters(tmp_path, modules, "texforce/tiny", pipeline_class=type(pipe), ui_name="run")
    expected = embeds(pipe)
    stock = {}
    for name in ("pytorch_lora_weights.safetensors", "run.safetensors"):
        fresh = BUILDERS[kind](image_size=32)
        fresh.load_lora_weights(tmp_path, weight_name=name)
        stock[name] = fresh
    clips = [n for n, e in text_encoders(pipe).items() if type(e).__name__ != "T5EncoderModel"]
    for name in clips:
        from_diffusers = embeds(stock["pytorch_lora_weights.safetensors"])[name]
        from_kohya = embeds(stock["run.safetensors"])[name]
        torch.testing.assert_close(from_diffusers, expected[name], atol=1e-6, rtol=0)
        torch.testing.assert_close(from_kohya, from_diffusers, atol=1e-5, rtol=1e-5)
        assert (from_kohya - embeds(BUILDERS[kind](image_size=32))[name]).abs().max() > 1e-3  # it was applied
    if kind == "flux":  # diffusers' kohya converter skips FLUX's T5 keys (`lora_te2_encoder_block_…`): no adapter
        assert not hasattr(stock["run.safetensors"].text_encoder_2, "peft_config")
    if "unet" in modules:
        reference = unet_out(pipe)
        for fresh in stock.values():
            torch.testing.assert_close(unet_out(fresh), reference, atol=1e-5, rtol=1e-5)


def test_peft_folder_has_the_older_stacks_names_and_loads_there(tmp_path):
    """transformers 4's CLIPTextModel has a `text_model` level that 5's lacks: the PEFT folder holds both names, so
    plain `PeftModel.from_pretrained` loads it on either module tree (4's rebuilt here by a wrapper)."""
    pipe, modules = trained("sd")
    save_adapters(tmp_path, {"text_encoder": modules["text_encoder"]}, "texforce/tiny-random")
    keys = set(load_file(tmp_path / "text_encoder" / "adapter_model.safetensors"))
    old = {
        f"base_model.model.text_model.encoder.layers.{i}.self_attn.{p}_proj.lora_{m}.weight"
        for i in range(2)
        for p in ("q", "k", "v", "out")
        for m in "AB"
    }
    assert old <= keys and {k.replace("text_model.", "") for k in old} == keys - old
    expected = embeds(pipe)["text_encoder"]
    ids = pipe.tokenizer(["a photo of a cat"], padding="max_length", max_length=32, return_tensors="pt").input_ids

    class OlderCLIPTextModel(torch.nn.Module):  # transformers 4's tree: CLIPTextModel.text_model.encoder.…
        def __init__(self, text_model: torch.nn.Module) -> None:
            super().__init__()
            self.text_model = text_model

        def forward(self, input_ids: torch.Tensor):
            return self.text_model(input_ids)

    newer = build_tiny_pipeline(image_size=32).text_encoder
    older = OlderCLIPTextModel(build_tiny_pipeline(image_size=32).text_encoder)
    assert "text_model.encoder.layers.0.self_attn.q_proj" in dict(older.named_modules())
    for model in (newer, older):
        peft = PeftModel.from_pretrained(model, tmp_path / "text_encoder")
        with torch.no_grad():
            torch.testing.assert_close(peft(ids)[0], expected, atol=1e-6, rtol=0)


def test_kohya_names_split_back_on_every_module_of_the_tiny_models():
    """Every Linear / Conv / Embedding of each base's text encoders and U-Nets: `.` → `_` → `.` is the identity
    (`UNDERSCORED` lists the name parts that carry an underscore)."""
    for build in BUILDERS.values():
        pipe = build(image_size=32)
        modules = dict(text_encoders(pipe)) | ({"unet": pipe.unet} if hasattr(pipe, "unet") else {})
        for component, model in modules.items():
            for name, layer in model.named_modules():
                if isinstance(layer, (torch.nn.Linear, torch.nn.Conv2d, torch.nn.Embedding)):
                    path = canonical_path(component, name)
                    assert dotted_path(path.replace(".", "_")) == path, (component, path)
    assert "text_model" in UNDERSCORED


def test_kohya_prefixes_follow_the_pipeline():
    _, modules = trained("flux")
    state, _ = kohya_state(adapter_set_of(modules, "default", None, "FluxPipeline"))
    assert {k.split("_")[1] for k in state} == {"te1", "te2"}
    state, _ = kohya_state(adapter_set_of({"text_encoder": modules["text_encoder"]}, "default", None, None))
    assert {k.split("_")[1] for k in state} == {"te"}  # one CLIP, pipeline unknown: SD 1.x's name


def test_unreadable_layouts_are_one_line_errors(tmp_path):
    save_file({"model.layer.weight": torch.zeros(2, 2)}, tmp_path / "other.safetensors")
    (tmp_path / "empty").mkdir()
    (tmp_path / "text.safetensors").write_text("not safetensors")
    for source, message in (
        (tmp_path / "other.safetensors", "texforce converts text-encoder and U-Net adapters only"),
        (tmp_path / "empty", "no LoRA adapter at"),
        (tmp_path / "text.safetensors", "cannot read"),
        (tmp_path / "missing", "adapter not found"),
    ):
        with pytest.raises(TexforceError, match=message) as error:
            read_adapters(source)
        assert "\n" not in str(error.value)


def test_export_cli_both_ways(tmp_path, capsys):
    pipe, modules = trained("sd")
    save_adapters(tmp_path / "lora", modules, "texforce/tiny-random", pipeline_class=type(pipe), ui_name="run")
    assert main(["export", str(tmp_path), "--format", "kohya", "-o", str(tmp_path / "k.safetensors")]) == 0
    assert main(["export", str(tmp_path / "k.safetensors"), "--format", "diffusers", "-o", str(tmp_path / "d")]) == 0
    assert load_file(tmp_path / "k.safetensors").keys() == load_file(tmp_path / "lora" / "run.safetensors").keys()
    written = load_file(tmp_path / "d" / "pytorch_lora_weights.safetensors")
    original = load_file(tmp_path / "lora" / "pytorch_lora_weights.safetensors")
    assert written.keys() == original.keys() and all(torch.equal(written[k], original[k]) for k in written)
    capsys.readouterr()
    assert main(["export", str(tmp_path / "d"), "--format", "kohya", "-o", str(tmp_path / "k2")]) == 2
    assert "give -o a .safetensors path" in capsys.readouterr().err


@pytest.mark.parametrize("release, kind", [("sd-turbo_texforce", "sd"), ("sdxl-turbo_texforce", "sdxl")])
def test_official_releases_export_to_a_kohya_file_stock_diffusers_applies_alike(release, kind, tmp_path):
    """The official layouts (a transformers 4 PEFT folder; a diffusers file without metadata, alpha = rank) as
    kohya files: stock diffusers on the kohya file gives what texforce's loader gives on the release."""
    official = Path(__file__).parent / "fixtures" / "official" / release
    kohya = convert_adapter(official, "kohya", tmp_path / f"{release}.safetensors")
    assert all(k.startswith("lora_te_" if kind == "sd" else ("lora_te1_", "lora_te2_")) for k in load_file(kohya))
    ours, stock = BUILDERS[kind](image_size=32), BUILDERS[kind](image_size=32)
    load_text_adapters(ours, official)
    stock.load_lora_weights(tmp_path, weight_name=kohya.name)
    base = embeds(BUILDERS[kind](image_size=32))
    for name, value in embeds(stock).items():
        torch.testing.assert_close(value, embeds(ours)[name], atol=1e-5, rtol=1e-5)
        assert (value - base[name]).abs().max() > 1e-3


def test_diffusers_refuses_alpha_tensors_in_its_own_layout(tmp_path):
    """Why the diffusers file keeps alpha in its metadata only: diffusers 0.42's `load_lora_weights` rejects a
    `<module>.alpha` tensor beside diffusers-layout keys (the kohya file carries them instead)."""
    _, modules = trained("sd")
    save_adapters(tmp_path, {"text_encoder": modules["text_encoder"]}, "texforce/tiny-random")
    with safe_open(tmp_path / "pytorch_lora_weights.safetensors", "pt") as handle:
        header = handle.metadata()
    tensors = load_file(tmp_path / "pytorch_lora_weights.safetensors")
    downs = [k for k in tensors if k.endswith(".lora_linear_layer.down.weight")]
    alphas = {k.removesuffix(".lora_linear_layer.down.weight") + ".alpha": torch.tensor(8.0) for k in downs}
    save_file(tensors | alphas, tmp_path / "with_alpha.safetensors", metadata=header)
    with pytest.raises(ValueError, match="Invalid LoRA checkpoint"):
        build_tiny_pipeline(image_size=32).load_lora_weights(tmp_path, weight_name="with_alpha.safetensors")
