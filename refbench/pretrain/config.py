"""The settings of ``refbench pretrain-shapes``, in a module of their own so that the command
line can show their defaults without importing torch."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from refbench.errors import UserError
from refbench.pretrain.captions import COLOUR_RATE


@dataclass
class PretrainConfig:
    seed: int = 0
    pool: int = 4096  # scenes kept in memory ...
    refresh: int = 4  # ... of which this many are replaced by new ones every step
    vae_steps: int = 600
    vae_batch_size: int = 32
    vae_lr: float = 1e-3
    kl_weight: float = 1e-6
    steps: int = 3000
    batch_size: int = 64
    lr: float = 1e-3
    warmup: int = 100
    caption_dropout: float = 0.1
    snr_gamma: float = 0.0  # >0: min-SNR-gamma loss weights (Hang et al. 2023); 0: plain MSE
    grounding_weight: float = 0.0  # >0: add the grounding loss (grounding.py) with this weight
    grounding_max_t: int = 1000  # the grounding loss counts only samples noised to t below this
    colour_rate: float = COLOUR_RATE  # share of caption mentions that name the colour beside the shape
    init_from: str = ""  # a trained model directory to continue the denoiser stage from
    save_every: int = 250
    log_every: int = 10
    threads: int = 0  # 0: torch's default
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        for name in ("pool", "vae_batch_size", "batch_size", "steps", "save_every", "log_every"):
            if getattr(self, name) < 1:
                raise UserError(f"pretrain-shapes: {name} must be at least 1, got {getattr(self, name)}")
        trained = ("batch_size",) if self.init_from else ("batch_size", "vae_batch_size")
        for name in trained:  # with --init-from the autoencoder is kept, not trained
            if getattr(self, name) > self.pool:
                raise UserError(f"pretrain-shapes: {name} {getattr(self, name)} exceeds the scene "
                                f"pool of {self.pool}: raise --pool or lower the batch size")
        if self.snr_gamma < 0:
            raise UserError("pretrain-shapes: --snr-gamma must be 0 (off) or positive")
        if self.grounding_weight < 0:
            raise UserError("pretrain-shapes: --grounding-weight must be 0 (off) or positive")
        if not 0 < self.grounding_max_t <= 1000:
            raise UserError("pretrain-shapes: --grounding-max-t must be in 1..1000")
        if not 0 <= self.colour_rate <= 1:
            raise UserError("pretrain-shapes: --colour-rate must be in [0, 1]")
        if self.init_from and not (Path(self.init_from) / "model_index.json").is_file():
            raise UserError(f"pretrain-shapes: --init-from {self.init_from} is not a model "
                            f"directory (no model_index.json): give a finished pretrain-shapes --out")
        if not 0 <= self.caption_dropout < 1:
            raise UserError("pretrain-shapes: caption dropout must be in [0, 1)")
