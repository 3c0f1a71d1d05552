"""Configs read from a checkpoint: gen/config.json (OmniGen2 format), und/config.json (both HF layouts),
vae/config.json (diffusers AutoencoderKL) and hbridge.json."""
from dataclasses import dataclass, field
from typing import List, Optional


@dataclass
class GenConfig:
    """OmniGen2Transformer2DModel config (DESIGN.md 3)."""
    patch_size: int = 2
    in_channels: int = 16
    out_channels: Optional[int] = None
    hidden_size: int = 2520
    num_layers: int = 32
    num_refiner_layers: int = 2
    num_attention_heads: int = 21
    num_kv_heads: int = 7
    multiple_of: int = 256
    ffn_dim_multiplier: Optional[float] = None
    norm_eps: float = 1e-5
    axes_dim_rope: List[int] = field(default_factory=lambda: [40, 40, 40])
    axes_lens: List[int] = field(default_factory=lambda: [10000, 10000, 10000])
    text_feat_dim: int = 2048
    timestep_scale: float = 1.0

    # fixed constants of the model (DESIGN.md 3), not read from the config
    ROPE_THETA = 10000.0
    QK_NORM_EPS = 1e-5
    NORM_OUT_EPS = 1e-6
    FREQ_DIM = 256

    def __post_init__(self):
        assert self.hidden_size % self.num_attention_heads == 0
        assert self.head_dim == sum(self.axes_dim_rope), "head_dim must equal sum(axes_dim_rope)"
        assert all(a % 2 == 0 for a in self.axes_dim_rope)
        assert self.num_attention_heads % self.num_kv_heads == 0

    @property
    def head_dim(self):
        return self.hidden_size // self.num_attention_heads

    @property
    def out_ch(self):
        return self.out_channels if self.out_channels is not None else self.in_channels

    @property
    def temb_dim(self):
        return min(self.hidden_size, 1024)

    @property
    def ffn_dim(self):
        inner = 4 * self.hidden_size
        if self.ffn_dim_multiplier is not None:
            inner = int(self.ffn_dim_multiplier * inner)
        m = self.multiple_of
        return m * ((inner + m - 1) // m)

    def to_json(self):
        return {
            "_class_name": "OmniGen2Transformer2DModel",
            "_diffusers_version": "0.33.1",
            "patch_size": self.patch_size,
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "hidden_size": self.hidden_size,
            "num_layers": self.num_layers,
            "num_refiner_layers": self.num_refiner_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_kv_heads": self.num_kv_heads,
            "multiple_of": self.multiple_of,
            "ffn_dim_multiplier": self.ffn_dim_multiplier,
            "norm_eps": self.norm_eps,
            "axes_dim_rope": list(self.axes_dim_rope),
            "axes_lens": list(self.axes_lens),
            "text_feat_dim": self.text_feat_dim,
            "timestep_scale": self.timestep_scale,
        }

    @classmethod
    def from_json(cls, d):
        keys = {f for f in cls.__dataclass_fields__}
        kw = {k: v for k, v in d.items() if k in keys}
        if kw.get("timestep_scale") is None:
            kw["timestep_scale"] = 1.0
        return cls(**kw)


@dataclass
class UndTextConfig:
    """The text-model numbers the bridge and the reference need, from either HF layout (DESIGN.md 2)."""
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    intermediate_size: int
    rms_norm_eps: float
    rope_theta: float
    mrope_section: List[int]
    tie_word_embeddings: bool
    vision_out_hidden_size: int

    @classmethod
    def from_json(cls, d):
        if "text_config" in d and d["text_config"] is not None:  # nested layout (transformers >= 4.5x / 5.x)
            t = d["text_config"]
            rp = t.get("rope_parameters") or t.get("rope_scaling") or {}
            theta = rp.get("rope_theta", t.get("rope_theta", 1e6))
            tie = d.get("tie_word_embeddings", t.get("tie_word_embeddings", False))
        else:  # flat layout
            t = d
            rp = d.get("rope_scaling") or d.get("rope_parameters") or {}
            theta = d.get("rope_theta", rp.get("rope_theta", 1e6))
            tie = d.get("tie_word_embeddings", False)
        heads = t["num_attention_heads"]
        return cls(
            vocab_size=t["vocab_size"],
            hidden_size=t["hidden_size"],
            num_hidden_layers=t["num_hidden_layers"],
            num_attention_heads=heads,
            num_key_value_heads=t.get("num_key_value_heads") or heads,
            head_dim=t.get("head_dim") or t["hidden_size"] // heads,
            intermediate_size=t["intermediate_size"],
            rms_norm_eps=t.get("rms_norm_eps", 1e-6),
            rope_theta=float(theta),
            mrope_section=list(rp["mrope_section"]),
            tie_word_embeddings=bool(tie),
            vision_out_hidden_size=d["vision_config"]["out_hidden_size"],
        )


def default_pairs(num_gen_layers, num_und_layers, skip_first, skip_last):
    """DESIGN.md 5: gen layers M..L_g-N-1 paired with und layers by u = M + floor((g-M)*n_u/n_g)."""
    M, N = skip_first, skip_last
    n_u = num_und_layers - M - N
    n_g = num_gen_layers - M - N
    assert n_u > 0 and n_g > 0
    return [[g, M + ((g - M) * n_u) // n_g] for g in range(M, num_gen_layers - N)]
