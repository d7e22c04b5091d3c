"""The exponential moving average of the trained parameters (``ema_decay``)."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Mapping

import torch


class EMA:
    """Exponential moving average of the trained parameters (fp32 shadow copies), with
    LDM `LitEma`'s warm-up: decay_n = min(decay, (1 + n) / (10 + n))."""

    def __init__(self, params: Mapping[str, torch.Tensor], decay: float):
        self.decay = float(decay)
        self.shadow = {k: p.detach().float().clone() for k, p in params.items()}

    @torch.no_grad()
    def update(self, params: Mapping[str, torch.Tensor], num_updates: int) -> None:
        d = min(self.decay, (1.0 + num_updates) / (10.0 + num_updates))
        for k, p in params.items():
            self.shadow[k].lerp_(p.detach().float(), 1.0 - d)

    @contextmanager
    def applied(self, params: Mapping[str, torch.Tensor]):
        """Temporarily put the EMA weights into the model (restored exactly afterwards)."""
        saved = {k: p.detach().clone() for k, p in params.items()}
        with torch.no_grad():
            for k, p in params.items():
                p.copy_(self.shadow[k])
        try:
            yield
        finally:
            with torch.no_grad():
                for k, p in params.items():
                    p.copy_(saved[k])
