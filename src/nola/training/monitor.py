"""What a run reports while it trains: TensorBoard scalars and a tqdm bar (main process only).

Scalars: train/loss (mean over the logging window), train/lr, train/grad_norm, train/tokens_per_s
(real input tokens over all processes), valid/loss at each epoch end. A resumed run purges the
events logged after its checkpoint, so the curves have no duplicated steps.
"""

from __future__ import annotations

import time
from pathlib import Path

from tqdm import tqdm


class Monitor:
    """Accumulates per-step numbers and writes them every `log_every` steps."""

    def __init__(self, log_dir: Path | None, *, total_steps: int, start_step: int, log_every: int) -> None:
        self.enabled = log_dir is not None
        self.log_every = log_every
        self.writer = None
        self.bar = None
        self.last = (start_step, 0.0, 0.0)  # step, lr, grad norm of the latest step
        if self.enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(log_dir), purge_step=start_step + 1)
            self.bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True)
        self._reset(time.perf_counter())

    def _reset(self, now: float) -> None:
        self.window_loss = 0.0
        self.window_steps = 0
        self.window_tokens = 0
        self.window_start = now

    def step(self, step: int, *, loss: float, lr: float, grad_norm: float, input_tokens: int) -> None:
        self.window_loss += loss
        self.window_steps += 1
        self.window_tokens += input_tokens
        self.last = (step, lr, grad_norm)
        if not self.enabled:
            return
        self.bar.update(1)
        if step % self.log_every == 0:
            self.flush()

    def flush(self) -> None:
        """Write the window's means at its last step and start a new window."""
        now = time.perf_counter()
        if self.enabled and self.window_steps:
            step, lr, grad_norm = self.last
            mean_loss = self.window_loss / self.window_steps
            tokens_per_s = self.window_tokens / max(now - self.window_start, 1e-9)
            self.writer.add_scalar("train/loss", mean_loss, step)
            self.writer.add_scalar("train/lr", lr, step)
            self.writer.add_scalar("train/grad_norm", grad_norm, step)
            self.writer.add_scalar("train/tokens_per_s", tokens_per_s, step)
            self.bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{tokens_per_s:.0f}")
        self._reset(now)

    def validation(self, step: int, loss: float, batch_mean_loss: float) -> None:
        """Token-mean validation loss and LoRA's mean of per-batch means."""
        if self.enabled:
            self.writer.add_scalar("valid/loss", loss, step)
            self.writer.add_scalar("valid/batch_mean_loss", batch_mean_loss, step)
            self.bar.write(f"step {step}: valid loss {loss:.4f} (LoRA's mean of batch means {batch_mean_loss:.4f})")

    def close(self) -> None:
        self.flush()
        if self.enabled:
            self.bar.close()
            self.writer.close()
