"""Loading the released PersonaLive weights, strictly.

A weights folder has the released layout::

    personalive/{denoising_unet,reference_unet,motion_encoder,pose_guider,temporal_module,motion_extractor}.pth
    sd-image-variations-diffusers/unet/{config.json, diffusion_pytorch_model.(safetensors|bin)}
    sd-image-variations-diffusers/image_encoder/{config.json, (model.safetensors|pytorch_model.bin)}
    sd-vae-ft-mse/{config.json, diffusion_pytorch_model.(safetensors|bin)}
    taesd/{config.json, diffusion_pytorch_model.(safetensors|bin)}   optional: the tiny decoder (``vae="tiny"``)

The denoising UNet is assembled as the original does it (base SD UNet inflated, then
``denoising_unet.pth``, then ``temporal_module.pth``; later files win), but strictly: every
parameter must be set by some file, and an unknown key or a shape mismatch is an error naming
the file, the key and both shapes. Buffers the modules compute themselves (position tables,
``idx_tensor``) may be absent, as may BatchNorm's unused ``num_batches_tracked``.
"""
from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from personalive_trt.choices import Decoder
from personalive_trt.config import LATENT_CHANNELS
from personalive_trt.configs import config_path

PERSONALIVE = "personalive"
BASE = "sd-image-variations-diffusers"
VAE_DIR = "sd-vae-ft-mse"
TAESD_DIR = "taesd"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt")

# Public repositories of the released weights (huggingface_hub ids) -> folder in the layout.
HUB_REPOS = {
    "lambdalabs/sd-image-variations-diffusers": BASE,
    "stabilityai/sd-vae-ft-mse": VAE_DIR,
    "huaichang/PersonaLive": ".",
    "madebyollin/taesd": TAESD_DIR,
}


class WeightsError(ValueError):
    """A weights folder, file or key that does not match the released layout."""


# ---- one component = one module filled from one or more files -----------------------------------
@dataclass(frozen=True)
class Component:
    """How one network is built and which files (in load order, later wins) fill it."""

    name: str
    files: tuple[str, ...]  # paths relative to the weights folder, suffix free where alternatives exist
    optional_key: Callable[[str], bool] = lambda key: False
    remap: Callable[[str, torch.Tensor], tuple[str, torch.Tensor] | None] = lambda k, v: (k, v)


def _computed_buffer(key: str) -> bool:
    return key.endswith(("pos_encoder.pe", "idx_tensor", "num_batches_tracked", "position_ids")) or key == "pe"


def _clip_remap(key: str, value: torch.Tensor):
    # Older CLIP checkpoints store the position ids; transformers computes them.
    return None if key.endswith("embeddings.position_ids") else (key, value)


_LEGACY_VAE_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
_LEGACY_VAE_PATTERN = re.compile(r"^(.*\.attentions\.\d+)\.(query|key|value|proj_attn)\.(weight|bias)$")


def _vae_remap(key: str, value: torch.Tensor):
    # sd-vae-ft-mse's .bin predates diffusers' attention rename (and may store 1x1 conv weights).
    match = _LEGACY_VAE_PATTERN.match(key)
    if match is None:
        return key, value
    prefix, old, kind = match.groups()
    if kind == "weight" and value.dim() == 4:
        value = value[:, :, 0, 0]
    return f"{prefix}.{_LEGACY_VAE_ATTENTION[old]}.{kind}", value


COMPONENTS = (
    Component("reference_unet", (f"{PERSONALIVE}/reference_unet",)),
    Component(
        "denoising_unet",
        (f"{BASE}/unet/diffusion_pytorch_model", f"{PERSONALIVE}/denoising_unet", f"{PERSONALIVE}/temporal_module"),
        optional_key=_computed_buffer,
    ),
    Component("pose_guider", (f"{PERSONALIVE}/pose_guider",)),
    Component("motion_encoder", (f"{PERSONALIVE}/motion_encoder",), optional_key=_computed_buffer),
    Component("motion_extractor", (f"{PERSONALIVE}/motion_extractor",), optional_key=_computed_buffer),
    Component("image_encoder", (f"{BASE}/image_encoder/model|pytorch_model",), remap=_clip_remap),
    Component("vae", (f"{VAE_DIR}/diffusion_pytorch_model",), remap=_vae_remap),
)
# Optional: loaded only for ``vae="tiny"``; checked when its folder exists.
TAESD = Component("taesd", (f"{TAESD_DIR}/diffusion_pytorch_model",))


def resolve_weight_file(root: Path, spec: str) -> Path:
    """``spec`` is ``dir/stem`` or ``dir/stemA|stemB``; any of WEIGHT_SUFFIXES is accepted."""
    folder, _, stems = spec.rpartition("/")
    candidates = [root / folder / f"{stem}{suffix}" for stem in stems.split("|") for suffix in WEIGHT_SUFFIXES]
    for path in candidates:
        if path.is_file():
            return path
    names = ", ".join(p.name for p in candidates[:3])
    raise WeightsError(f"{root / folder}: missing weight file (expected one of {names}, ...)")


def read_state_file(path: Path) -> dict[str, torch.Tensor]:
    """A checkpoint's tensors (memory-mapped where the format allows); never unpickles code."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # noqa: BLE001 -- re-raised with the file name; the cause is chained
        raise WeightsError(f"{path}: cannot read checkpoint ({type(exc).__name__}: {exc})") from exc
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path}: expected a state_dict of tensors, got {type(state).__name__}")
    return dict(state)


@dataclass
class FileReport:
    path: str
    tensors: int = 0
    parameters: int = 0
    dtypes: str = ""
    status: str = "ok"


@dataclass
class ComponentReport:
    name: str
    files: list[FileReport] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    absent: str = ""  # an optional component not in the folder: why that is fine (not a problem)

    @property
    def ok(self) -> bool:
        return not self.problems


def match_state(
    component: Component, expected: Mapping[str, torch.Size], root: Path
) -> tuple[dict[str, torch.Tensor], ComponentReport]:
    """Merge a component's files in load order against the module's expected keys/shapes.

    Returns the merged state_dict and a report whose ``problems`` list every missing file,
    unexpected key, shape mismatch and parameter that no file sets (empty when loadable).
    """
    report = ComponentReport(component.name)
    merged: dict[str, torch.Tensor] = {}
    for spec in component.files:
        try:
            path = resolve_weight_file(root, spec)
            state = read_state_file(path)
        except WeightsError as exc:
            report.files.append(FileReport(spec, status="missing" if "missing" in str(exc) else "unreadable"))
            report.problems.append(str(exc))
            continue
        file_report = FileReport(str(path.relative_to(root)))
        dtypes = set()
        for raw_key, raw_value in state.items():
            mapped = component.remap(raw_key, raw_value)
            if mapped is None:
                continue
            key, value = mapped
            if key not in expected:
                report.problems.append(f"{path}: unexpected key {key!r} with shape {tuple(value.shape)}")
                file_report.status = "unexpected keys"
                continue
            if tuple(value.shape) != tuple(expected[key]):
                report.problems.append(
                    f"{path}: key {key!r} has shape {tuple(value.shape)}, expected {tuple(expected[key])}"
                )
                file_report.status = "shape mismatch"
                continue
            merged[key] = value
            file_report.tensors += 1
            file_report.parameters += value.numel()
            dtypes.add(str(value.dtype).removeprefix("torch."))
        file_report.dtypes = ",".join(sorted(dtypes))
        report.files.append(file_report)
    files = ", ".join(component.files)
    for key, shape in expected.items():
        if key not in merged and not component.optional_key(key):
            report.problems.append(
                f"{component.name}: key {key!r} (shape {tuple(shape)}) is set by no file among [{files}]"
            )
    return merged, report


def raise_problems(report: ComponentReport) -> None:
    if report.problems:
        more = f" (and {len(report.problems) - 1} more problem(s))" if len(report.problems) > 1 else ""
        raise WeightsError(report.problems[0] + more)


# ---- building the modules ---------------------------------------------------------------------
def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise WeightsError(f"{path}: missing config file") from exc
    except (OSError, json.JSONDecodeError) as exc:
        raise WeightsError(f"{path}: cannot read JSON config ({exc})") from exc


def unet3d_additional_kwargs() -> dict:
    return yaml.safe_load(config_path("unet3d.yaml").read_text())


def build_module(name: str, configs: Mapping[str, dict]) -> torch.nn.Module:
    """An uninitialised-weights module for component ``name`` (configs: sd_unet, image_encoder, vae)."""
    from personalive_trt.models import (
        MotionEncoder,
        MotionExtractor,
        PoseGuider,
        ReferenceUNet,
        UNet3DConditionModel,
    )

    if name == "reference_unet":
        return ReferenceUNet.from_config(dict(configs["sd_unet"]))
    if name == "denoising_unet":
        return UNet3DConditionModel.from_base_config(dict(configs["sd_unet"]), unet3d_additional_kwargs())
    if name == "pose_guider":
        # The released guider emits 320 channels = the first UNet level; follow the config.
        return PoseGuider(conditioning_embedding_channels=configs["sd_unet"]["block_out_channels"][0])
    if name == "motion_encoder":
        return MotionEncoder(**configs.get("motion_encoder", {}))
    if name == "motion_extractor":
        return MotionExtractor(num_kp=21)
    if name == "image_encoder":
        from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

        keep = {k: v for k, v in configs["image_encoder"].items() if not k.startswith("_") and k != "architectures"}
        return CLIPVisionModelWithProjection(CLIPVisionConfig(**keep))
    if name == "vae":
        from diffusers import AutoencoderKL

        return AutoencoderKL.from_config(dict(configs["vae"]))
    if name == "taesd":
        from diffusers import AutoencoderTiny

        return AutoencoderTiny.from_config(dict(configs["taesd"]))
    raise KeyError(name)


def folder_configs(root: Path) -> dict[str, dict]:
    return {
        "sd_unet": read_json(root / BASE / "unet" / "config.json"),
        "image_encoder": read_json(root / BASE / "image_encoder" / "config.json"),
        "vae": read_json(root / VAE_DIR / "config.json"),
        "motion_encoder": motion_encoder_config(root),
    }


def motion_encoder_config(root: Path) -> dict:
    """The motion encoder's one free width, read from its checkpoint: the released 1024, or the 128 of a folder
    written from the tiny synthetic weights (``CONFIGS["tiny"]``); any other is refused, naming file and key.
    ``{}`` (the released width) when the file is missing: the strict load reports that."""
    from personalive_trt.models.motion_encoder import ATTENTION_WIDTH_KEY, RELEASED_ATTENTION_WIDTH
    from personalive_trt.models.synthetic import CONFIGS

    try:
        path = resolve_weight_file(root, f"{PERSONALIVE}/motion_encoder")
    except WeightsError:
        return {}
    if path.suffix == ".safetensors":  # the shape alone, not a second read of the whole file
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as file:
            shape = file.get_slice(ATTENTION_WIDTH_KEY).get_shape() if ATTENTION_WIDTH_KEY in file.keys() else None
    else:  # memory-mapped: the tensors are not read
        tensor = read_state_file(path).get(ATTENTION_WIDTH_KEY)
        shape = None if tensor is None else tensor.shape
    if shape is None:
        return {}  # the strict load names the missing key
    width = int(shape[0])
    known = {RELEASED_ATTENTION_WIDTH, CONFIGS["tiny"]["motion_encoder"]["attention_width"]}
    if width not in known:
        raise WeightsError(f"{path}: {ATTENTION_WIDTH_KEY} has {width} output channels, expected "
                           f"{RELEASED_ATTENTION_WIDTH} (the released motion encoder)")
    return {} if width == RELEASED_ATTENTION_WIDTH else {"attention_width": width}


TAESD_ABSENT = "absent (optional: needed only for --vae tiny; `personalive-trt weights download` fetches it)"
# TAESD for SD1 decodes the UNet's latents as they are (x0.18215): its config must not rescale them.
# Defaults are diffusers' AutoencoderTiny defaults (older config.json files omit shift_factor).
_TAESD_REQUIRED = (("latent_channels", 4, LATENT_CHANNELS), ("scaling_factor", 1.0, 1.0), ("shift_factor", 0.0, 0.0))


def taesd_config(root: Path) -> dict:
    """``taesd/config.json``, checked to be an SD1 TAESD (4 latent channels, scaling factor 1, no shift)."""
    path = root / TAESD_DIR / "config.json"
    config = read_json(path)
    kind = config.get("_class_name", "AutoencoderTiny")
    if kind != "AutoencoderTiny":
        raise WeightsError(f"{path}: _class_name {kind!r}, expected 'AutoencoderTiny' (madebyollin/taesd)")
    for key, default, expected in _TAESD_REQUIRED:
        value = config.get(key, default)
        if value is None or float(value) != expected:
            raise WeightsError(f"{path}: {key} = {value!r}, expected {expected} (TAESD for SD1.x decodes the "
                               "UNet's x0.18215 latents directly)")
    return config


def require_taesd(root: Path) -> None:
    """``vae="tiny"`` on a folder without ``taesd/``: one line naming the folder and the way to get it."""
    if not (root / TAESD_DIR).is_dir():
        raise WeightsError(f"{root / TAESD_DIR}: missing TAESD folder (needed for --vae tiny); fetch it with "
                           f"`personalive-trt weights download {root}`")


def _check_component(component: Component, configs: Mapping[str, dict], root: Path) -> ComponentReport:
    with torch.device("meta"):
        module = build_module(component.name, configs)
    expected = {k: v.shape for k, v in module.state_dict().items()}
    return match_state(component, expected, root)[1]


def check_taesd(root: Path) -> ComponentReport:
    """The optional TAESD decoder: strict when ``taesd/`` exists, reported as absent (not a problem) otherwise."""
    if not (root / TAESD_DIR).is_dir():
        return ComponentReport(TAESD.name, absent=TAESD_ABSENT)
    try:
        configs = {"taesd": taesd_config(root)}
    except WeightsError as exc:
        return ComponentReport(TAESD.name, problems=[str(exc)])
    return _check_component(TAESD, configs, root)


def check_weights_dir(root: str | Path) -> list[ComponentReport]:
    """Validate a weights folder without materialising the networks (modules on the meta device)."""
    root = Path(root)
    if not root.is_dir():
        raise WeightsError(f"{root}: weights folder not found")
    try:
        configs = folder_configs(root)
    except WeightsError as exc:
        report = ComponentReport("configs", problems=[str(exc)])
        return [report]
    return [*(_check_component(component, configs, root) for component in COMPONENTS), check_taesd(root)]


def validate_weights_folder(root: Path) -> None:
    """Fail fast, with the folder named, when ``root`` is not a weights folder at all."""
    if not root.is_dir():
        raise WeightsError(f"{root}: weights folder not found")
    expected = [PERSONALIVE, BASE, VAE_DIR]
    missing = [name for name in expected if not (root / name).is_dir()]
    if len(missing) == len(expected):
        raise WeightsError(
            f"{root}: not a PersonaLive weights folder (expected sub-folders {', '.join(expected)}); "
            "see `personalive-trt weights download`"
        )


def load_component(
    component: Component, configs: Mapping[str, dict], root: Path
) -> torch.nn.Module:
    module = build_module(component.name, configs)
    expected = {k: v.shape for k, v in module.state_dict().items()}
    merged, report = match_state(component, expected, root)
    raise_problems(report)
    result = module.load_state_dict(merged, strict=False)
    # match_state already proved the keys; this guards against a module whose state_dict lies.
    stray = [k for k in result.missing_keys if not component.optional_key(k)] + list(result.unexpected_keys)
    if stray:
        raise WeightsError(f"{component.name}: load_state_dict disagreed on keys {stray[:3]}")
    return module


# ---- the set of networks ----------------------------------------------------------------------
@dataclass
class Models:
    """Every network of PersonaLive, loaded and ready for inference (eval mode, no grad)."""

    reference_unet: torch.nn.Module
    denoising_unet: torch.nn.Module
    pose_guider: torch.nn.Module
    motion_encoder: torch.nn.Module
    motion_extractor: torch.nn.Module
    image_encoder: torch.nn.Module
    vae: torch.nn.Module
    source: str
    synthetic: bool = False
    taesd: torch.nn.Module | None = None  # the tiny decoder, loaded for vae="tiny" only

    NAMES = tuple(c.name for c in COMPONENTS)

    def modules(self) -> dict[str, torch.nn.Module]:
        """Every loaded network by component name (``taesd`` only when it was loaded)."""
        named = {name: getattr(self, name) for name in self.NAMES}
        if self.taesd is not None:
            named[TAESD.name] = self.taesd
        return named

    @property
    def device(self) -> torch.device:
        return next(self.denoising_unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.denoising_unet.parameters()).dtype

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "Models":
        for module in self.modules().values():
            cast(module, device, dtype)
        return self


def cast(module: torch.nn.Module, device, dtype) -> torch.nn.Module:
    """Move/cast every parameter, like the original's ``.to(device, dtype)``.

    Goes through ``nn.Module.to`` rather than diffusers' override, which warns on every cast
    about (no) modules to keep in fp32; modules that keep fp32 parts do it in ``_apply``.
    """
    return torch.nn.Module.to(module, device=device, dtype=dtype)


def _finish(modules: dict[str, torch.nn.Module], device, dtype, source: str, synthetic: bool) -> Models:
    for module in modules.values():
        cast(module.eval().requires_grad_(False), device, dtype)
    return Models(**modules, source=source, synthetic=synthetic)


SYNTHETIC_NOTICE = (
    "NOTICE: using SYNTHETIC random weights ({spec}) -- the output is NOT a real animation. "
    "Get the released weights with `personalive-trt weights download ./pretrained_weights`."
)


def _synthetic_namespace(component: str) -> Callable[[str], str]:
    if component == "denoising_unet":
        return lambda key: "temporal_module" if ".temporal_modules." in key else "denoising_unet"
    return lambda key: component


def parse_vae(vae: Decoder | str) -> Decoder:
    """``vae`` as a :class:`~personalive_trt.choices.Decoder`, or a one-line :class:`WeightsError`."""
    try:
        return Decoder.parse(vae, "vae")
    except ValueError as exc:
        raise WeightsError(str(exc)) from None


def components(vae: Decoder) -> tuple[Component, ...]:
    """The components a stream with the ``vae`` decoder loads: TAESD besides the released ones for ``tiny``."""
    return COMPONENTS + ((TAESD,) if vae is Decoder.TINY else ())


def synthetic_models(
    size: str = "tiny", seed: int = 0, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
    vae: str = "full",
) -> Models:
    """Deterministic random networks in the released layout, built in memory.

    ``size`` is ``"tiny"`` (fast on CPU), ``"small"`` (the reference data's small config: with
    seed 0 the tensors equal its synthesized golden weights) or ``"full"`` (released sizes).
    ``SIZE:device`` (``"full:device"``: full-size weights in seconds on a GPU) builds each network on
    the meta device and fills it in place on ``device`` in ``dtype``, with other numbers of the same
    magnitudes (:func:`personalive_trt.models.synthetic.fill_module_`).
    ``vae="tiny"`` adds the TAESD decoder (its tensors in their own ``taesd`` namespace).
    """
    from personalive_trt.models.synthetic import CONFIGS, synth_state_dict

    base, _, fill = size.partition(":")
    if base not in CONFIGS or fill not in ("", "device"):
        raise WeightsError(f"synthetic weights size {size!r}: expected one of {sorted(CONFIGS)}, "
                           "optionally followed by ':device'")
    vae = parse_vae(vae)
    if fill == "device":
        return _synthetic_on_device(base, seed, device, dtype, vae)
    modules = {}
    for component in components(vae):
        module = build_module(component.name, CONFIGS[size])
        module.load_state_dict(synth_state_dict(module, seed, _synthetic_namespace(component.name)), strict=True)
        modules[component.name] = module
    return _finish(modules, device, dtype, f"synthetic:{size} (seed {seed})", synthetic=True)


def _synthetic_on_device(size: str, seed: int, device, dtype: torch.dtype, vae: Decoder) -> Models:
    """``synthetic:SIZE:device``: every component from :func:`synthetic_component`."""
    from personalive_trt.devices import canonical_device

    device = canonical_device(device)
    modules = {component.name: synthetic_component(component.name, size, seed, device, dtype)
               for component in components(vae)}
    return Models(**modules, source=f"synthetic:{size}:device (seed {seed})", synthetic=True)


def synthetic_component(name: str, size: str, seed: int = 0, device: torch.device | str = "cpu",
                        dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """One synthetic component built on the meta device, cast there, ``to_empty`` on ``device`` and filled in
    place (:func:`personalive_trt.models.synthetic.fill_module_`): nothing is allocated but the final tensors (plus
    one fill chunk), and no state dict is materialised. Eval mode, no gradients."""
    from personalive_trt.models.synthetic import CONFIGS, fill_module_

    with torch.device("meta"):
        module = build_module(name, CONFIGS[size])
    cast(module.eval().requires_grad_(False), None, dtype)  # on meta: free; keeps fp32 parts where kept
    module.to_empty(device=device)
    filled = fill_module_(module, seed, _synthetic_namespace(name))
    expected = module.state_dict().keys()
    if sorted(filled) != sorted(expected):  # strict: every key of the layout, nothing else
        raise WeightsError(f"{name}: device fill covered {len(filled)} of {len(expected)} keys")
    return module


DEFAULT_WEIGHTS_DIR = Path("pretrained_weights")


def resolve_weights(spec: str) -> str:
    """``auto``: ./pretrained_weights when it exists, otherwise synthetic (tiny) weights."""
    if spec != "auto":
        return spec
    return str(DEFAULT_WEIGHTS_DIR) if DEFAULT_WEIGHTS_DIR.is_dir() else "synthetic"


def parse_weights_spec(spec: str | Path) -> tuple[str, str | Path]:
    """``synthetic[:tiny|small|full][:device]`` -> ("synthetic", size[":device"]); anything else -> ("dir", path)."""
    from personalive_trt.models.synthetic import CONFIGS, DEFAULT_SYNTHETIC

    text = str(spec)
    if text == "synthetic" or text.startswith("synthetic:"):
        size = text.partition(":")[2] or DEFAULT_SYNTHETIC
        base, _, fill = size.partition(":")
        if base not in CONFIGS or fill not in ("", "device"):
            raise WeightsError(f"--weights {text!r}: unknown synthetic size {size!r}; expected one of "
                               f"{', '.join('synthetic:' + k for k in CONFIGS)} (optionally + ':device')")
        return "synthetic", size
    return "dir", Path(text)


def load_models(
    weights: str | Path,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    vae: str = "full",
) -> Models:
    """Load every PersonaLive network.

    Args:
        weights (`str` or `Path`): a folder in the released layout, or ``"synthetic"`` (=
            ``"synthetic:tiny"``, fast on CPU), ``"synthetic:small"`` (the golden reference config) or
            ``"synthetic:full"`` (released sizes) for deterministic random weights.
        device, dtype: where and in which precision the networks run (cast after loading,
            as the original does).
        seed (`int`, defaults to 0): seed of synthetic weights (ignored for a folder).
        vae (`str`, defaults to ``"full"``): ``"tiny"`` also loads the TAESD decoder from ``taesd/``
            (``Models.taesd``; the full VAE stays loaded: its encoder encodes the reference).
    """
    vae = parse_vae(vae)
    kind, value = parse_weights_spec(weights)
    if kind == "synthetic":
        return synthetic_models(str(value), seed=seed, device=device, dtype=dtype, vae=vae)
    root = Path(value)
    validate_weights_folder(root)
    if vae is Decoder.TINY:
        require_taesd(root)  # before minutes of loading the rest
    configs = folder_configs(root)
    modules = {c.name: load_component(c, configs, root) for c in COMPONENTS}
    if vae is Decoder.TINY:
        modules[TAESD.name] = load_component(TAESD, {"taesd": taesd_config(root)}, root)
    return _finish(modules, device, dtype, str(root), synthetic=False)
