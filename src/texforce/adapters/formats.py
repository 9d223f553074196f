"""LoRA files in the layouts UIs and libraries read, converted through one neutral form (`AdapterSet`).

Keys of one module (CLIP layer 0's `q_proj`) in each format:
    kohya      one `.safetensors` (ComfyUI, Forge, AUTOMATIC1111):
               `lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight`, `….lora_up.weight`, `….alpha`
    diffusers  `pytorch_lora_weights.safetensors`:
               `text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_linear_layer.down.weight`
    peft       `<component>/adapter_model.safetensors`:
               `base_model.model.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight`

kohya prefixes: `lora_te_` (SD 1.x / 2.x CLIP), `lora_te1_` / `lora_te2_` / `lora_te3_` for the pipeline's
`text_encoder` / `text_encoder_2` / `text_encoder_3` (SDXL and SD3: CLIP-L, CLIP-G, SD3's T5; FLUX: CLIP-L, T5),
`lora_unet_` for the U-Net (its diffusers module path, `.` → `_`). The diffusers file holds no T5 (diffusers' loaders
read none): a T5 travels in kohya files and PEFT folders. U-Net keys in the diffusers file are in the attention-
processor layout (`unet.….attn1.processor.to_q_lora.down.weight`), which diffusers' `load_lora_weights` and the UIs
both read. Alpha: a `.alpha` tensor per module (kohya), the `lora_adapter_metadata` header (diffusers; diffusers
refuses `.alpha` tensors in its own layout) or `adapter_config.json` (PEFT).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch
from diffusers.utils import convert_state_dict_to_diffusers
from safetensors import safe_open

from texforce.errors import TexforceError
from texforce.files import save_safetensors

DIFFUSERS_WEIGHTS = "pytorch_lora_weights.safetensors"
PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."
COMPONENTS = ("text_encoder", "text_encoder_2", "text_encoder_3", "unet")
FORMATS = ("kohya", "diffusers", "peft")
# LoRA metadata of our diffusers files: fields every peft's LoraConfig has (diffusers >= 0.34 passes the metadata to
# it, and older peft versions refuse newer fields); diffusers 0.35 also requires the two patterns
PORTABLE_LORA_FIELDS = ("r", "lora_alpha", "target_modules", "lora_dropout", "rank_pattern", "alpha_pattern")
# Module-name parts with an underscore in SD / SDXL U-Nets, CLIP and T5 encoders: how a kohya name splits back
UNDERSCORED = frozenset(
    {
        "text_model", "self_attn", "q_proj", "k_proj", "v_proj", "out_proj", "text_projection", "layer_norm1",
        "layer_norm2", "final_layer_norm", "token_embedding", "position_embedding", "down_blocks", "up_blocks",
        "mid_block", "transformer_blocks", "to_q", "to_k", "to_v", "to_out", "proj_in", "proj_out", "time_emb_proj",
        "conv_shortcut", "conv_in", "conv_out", "conv_norm_out", "time_embedding", "linear_1", "linear_2",
        "add_embedding", "add_time_proj", "wi_0", "wi_1", "layer_norm", "relative_attention_bias", "embed_tokens",
    }
)  # fmt: skip
# diffusers-file key endings: (ending, which matrix)
_DIFFUSERS_ENDINGS = (
    (".lora_linear_layer.down.weight", "down"), (".lora_linear_layer.up.weight", "up"),
    (".lora.down.weight", "down"), (".lora.up.weight", "up"), ("_lora.down.weight", "down"),
    ("_lora.up.weight", "up"), (".lora_A.weight", "down"), (".lora_B.weight", "up"),
)  # fmt: skip
_OLD_CLIP_NAMES = {"to_q": "q_proj", "to_k": "k_proj", "to_v": "v_proj", "to_out": "out_proj"}


@dataclass
class LoraModule:
    """One adapted layer: update = alpha / rank · up @ down."""

    down: torch.Tensor  # (r, in), peft's lora_A
    up: torch.Tensor  # (out, r), peft's lora_B
    alpha: float

    @property
    def rank(self) -> int:
        return self.down.shape[0]


@dataclass
class AdapterSet:
    """Every adapter of one model by component (`text_encoder`, …, `unet`), each by canonical module path: a CLIP's
    with its `text_model.` level, T5's and the U-Net's as their diffusers / transformers modules name them."""

    components: dict[str, dict[str, LoraModule]]
    base: str | None = None
    pipeline: str | None = None  # the pipeline class name, when known: picks `lora_te_` or `lora_te1_`
    numbered: bool | None = None  # a kohya file's own choice of `lora_te1_` over `lora_te_`, kept on conversion
    extra_config: dict[str, dict] = field(default_factory=dict)  # PEFT config fields kept from a live module

    def rank(self, component: str) -> int:
        return _most_common([m.rank for m in self.components[component].values()])

    def alpha(self, component: str) -> float:
        return _most_common([m.alpha for m in self.components[component].values()])

    def peft_config(self, component: str) -> dict:
        """The PEFT `LoraConfig` fields of one component; modules off its rank or alpha go in the patterns."""
        rank, alpha, modules = self.rank(component), self.alpha(component), self.components[component]
        config = dict(self.extra_config.get(component, {}))
        config.update(
            r=rank,
            lora_alpha=alpha,
            target_modules=sorted({target_name(path) for path in modules}),
            lora_dropout=config.get("lora_dropout", 0.0),
            rank_pattern={path: m.rank for path, m in modules.items() if m.rank != rank},
            alpha_pattern={path: m.alpha for path, m in modules.items() if m.alpha != alpha},
        )
        return config


def _most_common(values: list) -> int | float:
    return Counter(values).most_common(1)[0][0]


def target_name(path: str) -> str:
    """The PEFT target of a module path: its last part, with its parent for a numbered one (`to_out.0`)."""
    parts = path.split(".")
    return ".".join(parts[-2:]) if parts[-1].isdigit() else parts[-1]


def is_t5_path(path: str) -> bool:
    return path.startswith("encoder.block.")


def canonical_path(component: str, path: str) -> str:
    """A module path as this module names it: a CLIP text model's with `text_model.` (transformers 5's
    `CLIPTextModel` lacks that level; transformers 4, diffusers and the UIs use it)."""
    if component != "unet" and path.startswith(("encoder.layers.", "embeddings.", "final_layer_norm")):
        return f"text_model.{path}"
    return path


def clip_alias(path: str) -> str | None:
    """The same CLIP module as transformers 5's `CLIPTextModel` names it (no `text_model.`), else None."""
    return path.removeprefix("text_model.") if path.startswith("text_model.") else None


# ---------------------------------------------------------------------------------------------- kohya names
def kohya_prefix(component: str, numbered: bool) -> str:
    """`lora_unet_`, `lora_te_` (a single-CLIP pipeline: SD 1.x / 2.x) or `lora_te{n}_`."""
    if component == "unet":
        return "lora_unet_"
    return f"lora_te{COMPONENTS.index(component) + 1}_" if numbered else "lora_te_"


def kohya_name(component: str, path: str, numbered: bool) -> str:
    return kohya_prefix(component, numbered) + path.replace(".", "_")


def dotted_path(flat: str) -> str:
    """A kohya module name (after its prefix) back to the dotted path: `_` joins the parts of `UNDERSCORED` names."""
    words, parts, i = flat.split("_"), [], 0
    while i < len(words):
        for j in range(min(len(words), i + 4), i, -1):
            candidate = "_".join(words[i:j])
            if j == i + 1 or candidate in UNDERSCORED:
                parts.append(candidate)
                i = j
                break
    return ".".join(parts)


def _kohya_component(name: str) -> tuple[str, str]:
    if name.startswith("lora_unet_"):
        return "unet", name.removeprefix("lora_unet_")
    if name.startswith("lora_te_"):
        return "text_encoder", name.removeprefix("lora_te_")
    for index, component in enumerate(COMPONENTS[:3], start=1):
        if name.startswith(f"lora_te{index}_"):
            return component, name.removeprefix(f"lora_te{index}_")
    raise TexforceError(f"kohya LoRA key {name!r} has none of lora_te_, lora_te1_-3_, lora_unet_")


def numbered_prefixes(adapters: AdapterSet) -> bool:
    """kohya's `lora_te1_` naming unless the pipeline is SD 1.x / 2.x (one CLIP: `lora_te_`); an unknown
    pipeline is numbered when the adapters cover more than one text encoder."""
    if adapters.numbered is not None:
        return adapters.numbered
    if adapters.pipeline is not None:
        return adapters.pipeline != "StableDiffusionPipeline"
    return any(c in adapters.components for c in ("text_encoder_2", "text_encoder_3"))


def _texforce_version() -> str:
    try:
        return version("texforce")
    except PackageNotFoundError:
        return "unknown"


def kohya_state(adapters: AdapterSet) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and header of the kohya file: every module's `lora_down`, `lora_up` and 0-dim `alpha`."""
    numbered, tensors = numbered_prefixes(adapters), {}
    for component, modules in adapters.components.items():
        for path, module in sorted(modules.items()):
            name = kohya_name(component, path, numbered)
            tensors[f"{name}.lora_down.weight"] = module.down.detach().float().contiguous().cpu()
            tensors[f"{name}.lora_up.weight"] = module.up.detach().float().contiguous().cpu()
            tensors[f"{name}.alpha"] = torch.tensor(float(module.alpha))
    components = list(adapters.components)
    ranks = {c: adapters.rank(c) for c in components}
    alphas = {c: adapters.alpha(c) for c in components}
    header = {
        "format": "pt",
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(max(ranks.values())),
        "ss_network_alpha": str(alphas[components[0]]),
        "texforce.base": adapters.base or "",
        "texforce.pipeline": adapters.pipeline or "",
        "texforce.rank": json.dumps(ranks),
        "texforce.alpha": json.dumps(alphas),
        "texforce.modules": json.dumps({c: adapters.peft_config(c)["target_modules"] for c in components}),
        "texforce.version": _texforce_version(),
    }
    return tensors, header


def write_kohya(adapters: AdapterSet, path: Path) -> None:
    """One kohya-layout `.safetensors` that ComfyUI, Forge and AUTOMATIC1111 load whole (strength 1.0)."""
    tensors, header = kohya_state(adapters)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_safetensors(tensors, path, metadata=header)


def read_kohya(tensors: dict[str, torch.Tensor], header: dict[str, str]) -> AdapterSet:
    """An `AdapterSet` of kohya-layout tensors; alpha defaults to the rank when a module has none."""
    components: dict[str, dict[str, LoraModule]] = {}
    for key in tensors:
        if not key.endswith(".lora_down.weight"):
            continue
        name = key.removesuffix(".lora_down.weight")
        component, flat = _kohya_component(name)
        up = tensors.get(f"{name}.lora_up.weight")
        if up is None:
            raise TexforceError(f"kohya LoRA key {key} has no {name}.lora_up.weight")
        down = tensors[key]
        alpha = tensors[f"{name}.alpha"].item() if f"{name}.alpha" in tensors else down.shape[0]
        path = canonical_path(component, dotted_path(flat))
        components.setdefault(component, {})[path] = LoraModule(down, up, float(alpha))
    numbered = any(key.startswith(("lora_te1_", "lora_te2_", "lora_te3_")) for key in tensors)
    base, pipeline = header.get("texforce.base") or None, header.get("texforce.pipeline") or None
    return AdapterSet(components, base, pipeline, numbered=numbered if components.keys() - {"unet"} else None)


# ---------------------------------------------------------------------------------------------- diffusers file
def unet_processor_key(key: str) -> str:
    """A U-Net key of `convert_state_dict_to_diffusers` (`….attn1.to_q.lora.down.weight`) in the attention-
    processor layout (`….attn1.processor.to_q_lora.down.weight`; `to_out.0` → `to_out`)."""
    module, _, matrix = key.partition(".lora.")
    head, leaf = module.rsplit(".", 1)
    if leaf == "0" and head.endswith(".to_out"):
        head, leaf = head.rsplit(".", 1)
    return f"{head}.processor.{leaf}_lora.{matrix}"


def diffusers_state(adapters: AdapterSet) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and header of the diffusers file: every component but a T5, alpha in `lora_adapter_metadata`."""
    tensors, metadata = {}, {}
    for component, modules in adapters.components.items():
        if any(is_t5_path(path) for path in modules):
            continue
        peft = {}
        for path, module in modules.items():
            peft[f"{path}.lora_A.weight"] = module.down.detach().contiguous().cpu()
            peft[f"{path}.lora_B.weight"] = module.up.detach().contiguous().cpu()
        for key, value in convert_state_dict_to_diffusers(peft).items():
            tensors[f"{component}.{unet_processor_key(key) if component == 'unet' else key}"] = value
        config = adapters.peft_config(component)
        metadata.update({f"{component}.{name}": config[name] for name in PORTABLE_LORA_FIELDS})
    return tensors, {"format": "pt", "lora_adapter_metadata": json.dumps(metadata, indent=2, sort_keys=True)}


def write_diffusers(adapters: AdapterSet, path: Path) -> None:
    tensors, header = diffusers_state(adapters)
    if not tensors:
        raise TexforceError("a diffusers LoRA file holds no T5 adapter; export these adapters as kohya or peft")
    path.parent.mkdir(parents=True, exist_ok=True)
    save_safetensors(tensors, path, metadata=header)


def _split_key(key: str) -> tuple[str, str]:
    """(module path, `down` / `up`) of a diffusers- or PEFT-layout key."""
    for ending, matrix in _DIFFUSERS_ENDINGS:
        if key.endswith(ending):
            return key.removesuffix(ending), matrix
    raise TexforceError(f"LoRA key {key!r} is in no layout texforce reads (diffusers, PEFT, kohya)")


def _module_path(component: str, path: str) -> str:
    """A diffusers-file module path as the model names it: no `processor.`, old names mapped to today's."""
    parts = [part for part in path.split(".") if part != "processor"]
    if component == "unet" and parts[-1] == "to_out":
        parts.append("0")
    elif component != "unet" and parts[-1] in _OLD_CLIP_NAMES:
        parts[-1] = _OLD_CLIP_NAMES[parts[-1]]
    return canonical_path(component, ".".join(parts))


def _modules(state: dict[str, torch.Tensor], component: str, alphas: dict[str, float]) -> dict[str, LoraModule]:
    """Pair `down` and `up` by module; alpha from `alphas` (module path, else `""` for all), else the rank."""
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        path, matrix = _split_key(key)
        pairs.setdefault(_module_path(component, path), {})[matrix] = value
    modules = {}
    for path, pair in pairs.items():
        if set(pair) != {"down", "up"}:
            raise TexforceError(f"LoRA module {component}.{path} has no {'up' if 'down' in pair else 'down'} matrix")
        alpha = alphas.get(path, alphas.get("", pair["down"].shape[0]))
        modules[path] = LoraModule(pair["down"], pair["up"], float(alpha))
    return modules


def read_diffusers(tensors: dict[str, torch.Tensor], header: dict[str, str]) -> AdapterSet:
    """An `AdapterSet` of a diffusers LoRA file (ours, diffusers' training scripts', the official releases')."""
    metadata = json.loads(header.get("lora_adapter_metadata", "{}"))
    by_component: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        component, _, rest = key.partition(".")
        if component not in COMPONENTS:
            raise TexforceError(f"LoRA key {key!r}: texforce converts text-encoder and U-Net adapters only")
        by_component.setdefault(component, {})[rest] = value
    components = {}
    for component, state in by_component.items():
        alpha = metadata.get(f"{component}.lora_alpha")
        components[component] = _modules(state, component, {} if alpha is None else {"": alpha})
    return AdapterSet(components)


def load_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        with safe_open(path, "pt") as handle:
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (safe_open is no dict)
            return tensors, handle.metadata() or {}
    except Exception as error:  # safetensors raises its own types for a file that is not one
        raise TexforceError(f"cannot read {path} as safetensors: {error}".splitlines()[0]) from None


def read_lora_file(path: Path) -> AdapterSet:
    """A kohya or diffusers LoRA file, told apart by its keys."""
    tensors, header = load_safetensors(path)
    if not tensors:
        raise TexforceError(f"{path} holds no tensors")
    if all(key.startswith(("lora_te", "lora_unet_")) for key in tensors):
        return read_kohya(tensors, header)
    return read_diffusers(tensors, header)


# ---------------------------------------------------------------------------------------------- PEFT folders
def has_clip_alias(component: str, pipeline: str | None) -> bool:
    """Whether the component is a `CLIPTextModel` (SD's, SDXL's and FLUX's `text_encoder`; SD3's CLIPs have a
    projection), whose PEFT keys transformers 4 and 5 name differently."""
    return component == "text_encoder" and pipeline != "StableDiffusion3Pipeline"


def write_peft(adapters: AdapterSet, component: str, folder: Path) -> None:
    """A standard PEFT folder for one component (`PeftModel.from_pretrained(pipe.<component>, folder)`). A
    `CLIPTextModel`'s keys come twice, with `text_model.` (transformers 4) and without (transformers 5): the same
    folder loads under both, whichever transformers wrote it."""
    tensors = {}
    alias = has_clip_alias(component, adapters.pipeline)
    for path, module in sorted(adapters.components[component].items()):
        names = [path, *([clip_alias(path)] if alias and clip_alias(path) else [])]
        for name in names:  # separate copies: safetensors stores no shared tensors
            tensors[f"{PEFT_PREFIX}{name}.lora_A.weight"] = module.down.detach().contiguous().cpu().clone()
            tensors[f"{PEFT_PREFIX}{name}.lora_B.weight"] = module.up.detach().contiguous().cpu().clone()
    config = adapters.peft_config(component)
    config.update(base_model_name_or_path=adapters.base, inference_mode=True, peft_type="LORA")
    folder.mkdir(parents=True, exist_ok=True)
    save_safetensors(tensors, folder / PEFT_WEIGHTS)
    (folder / PEFT_CONFIG).write_text(json.dumps(config, indent=2, default=list, sort_keys=True) + "\n")


def pattern_value(pattern: dict, path: str, default: float) -> float:
    """PEFT's rank / alpha pattern lookup: a key matches a module path it ends (at a `.`)."""
    for key, value in pattern.items():
        if path == key or path.endswith(f".{key}"):
            return value
    return default


def read_peft(folder: Path, component: str) -> tuple[dict[str, LoraModule], str | None]:
    """The modules of a PEFT folder (either CLIP key layout) and the base model its config names."""
    try:
        config = json.loads((folder / PEFT_CONFIG).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise TexforceError(f"cannot read {folder / PEFT_CONFIG}: {error}") from None
    if config.get("peft_type", "LORA") != "LORA":
        raise TexforceError(f"{folder} holds a {config['peft_type']} adapter; texforce converts LoRA only")
    if (folder / PEFT_WEIGHTS).is_file():
        state, _ = load_safetensors(folder / PEFT_WEIGHTS)
    elif (folder / "adapter_model.bin").is_file():
        state = torch.load(folder / "adapter_model.bin", map_location="cpu", weights_only=True)
    else:
        raise TexforceError(f"PEFT adapter {folder} has {PEFT_CONFIG} but no {PEFT_WEIGHTS}")
    state = {key.removeprefix(PEFT_PREFIX): value for key, value in state.items()}
    modules = _modules(state, component, {})
    alpha, alphas = config.get("lora_alpha", 8), config.get("alpha_pattern") or {}
    for path, module in modules.items():
        module.alpha = float(pattern_value(alphas, path, alpha))
    return modules, config.get("base_model_name_or_path")
