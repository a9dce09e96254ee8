"""One training step and what it needs: the network with its loss, optimiser, schedule and gradient
scaler (:class:`Fit`, :func:`setup_fit`), the step itself (:func:`train_step`, with the consistency
loss of :mod:`sscild.model.consistency` when there are unlabelled images) and the running means of
loss and training Dice that the loop logs (:class:`RunningMeans`). The loop is
:func:`sscild.model.train.train_model`."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from monai.losses import DiceCELoss

from sscild.model.consistency import Consistency
from sscild.model.deepsup import DeepSupervision
from sscild.model.network import build_network
from sscild.model.selftrain import IGNORE_LABEL, MaskedDiceCE
from sscild.profiles import Profile

__all__ = ["lr_lambda", "Fit", "setup_fit", "train_step", "RunningMeans"]


def lr_lambda(iterations: int, warmup: int):
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, 1.0 - (step - warmup) / max(1, iterations - warmup)) ** 0.9
    return f


@dataclass
class Fit:
    """What one training step uses: the network, its loss, optimiser, schedule and gradient scaler."""

    net: torch.nn.Module
    loss_fn: torch.nn.Module
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    numerics: dict
    device: torch.device
    ds: DeepSupervision | None = None
    cons: Consistency | None = None

    @property
    def trained(self) -> torch.nn.Module:
        """What a checkpoint holds: the network, with the deep-supervision heads or the consistency
        teacher when there are any."""
        if self.ds is None and self.cons is None:
            return self.net
        parts = {"net": self.net}
        if self.ds is not None:
            parts["ds"] = self.ds
        if self.cons is not None:
            parts["teacher"] = self.cons.teacher
        return torch.nn.ModuleDict(parts)


def setup_fit(p: Profile, *, seed: int, total: int, device: torch.device, numerics: dict, use_amp: bool,
               num_classes: int, init_state: dict | None, masked: bool) -> Fit:
    """Seed torch, build the network (or start it from ``init_state``), its loss, optimiser and schedule."""
    torch.manual_seed(seed)
    net = build_network(p, out_channels=num_classes).to(device)
    if init_state is not None:
        net.load_state_dict(init_state)
    if numerics["channels_last"]:
        net = net.to(memory_format=torch.channels_last)
    if masked:
        loss_fn = MaskedDiceCE(batch=bool(p.batch_dice))
    else:
        loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, batch=bool(p.batch_dice))
    if p.deep_supervision and p.architecture != "unet":
        raise ValueError(f"profile {p.name!r}: deep_supervision is built for architecture 'unet' only, "
                         f"got architecture {p.architecture!r}")
    ds = DeepSupervision(net, num_classes, p.deep_supervision).to(device) if p.deep_supervision else None
    params = list(net.parameters()) + (list(ds.parameters()) if ds is not None else [])
    if p.optimizer == "adamw":
        opt = torch.optim.AdamW(params, lr=p.learning_rate, weight_decay=p.weight_decay)
    elif p.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=p.learning_rate, momentum=0.99, nesterov=True, weight_decay=p.weight_decay)
    else:
        raise ValueError(f"profile {p.name!r}: optimizer must be 'adamw' or 'sgd', got {p.optimizer!r}")
    warmup = max(1, min(50, total // 20))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(total, warmup))
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    return Fit(net=net, loss_fn=loss_fn, opt=opt, sched=sched, scaler=scaler, numerics=numerics, device=device, ds=ds)


def train_step(fit: Fit, x: torch.Tensor, y: torch.Tensor,
                unlabelled: tuple[torch.Tensor, torch.Tensor, float] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimiser step on the augmented batch; returns the logits and the loss of the labelled batch.

    ``unlabelled``: (strong view, teacher's labels, weight) of consistency learning
    (:mod:`sscild.model.consistency`): the student sees both batches in one forward pass and the
    weighted consistency loss is added to the supervised one."""
    n = x.shape[0]
    if unlabelled is not None:
        x = torch.cat([x, unlabelled[0].to(x.dtype)])
    if fit.numerics["channels_last"]:
        x = x.contiguous(memory_format=torch.channels_last)
    fit.opt.zero_grad(set_to_none=True)
    with torch.autocast(device_type=fit.device.type, dtype=fit.numerics["dtype"], enabled=fit.numerics["autocast"]):
        logits = fit.net(x)
        if fit.ds is not None:
            loss = fit.ds.loss(fit.loss_fn, logits, y)
    if unlabelled is not None:
        logits, logits_u = logits[:n], logits[n:]
    if fit.ds is None:
        loss = fit.loss_fn(logits.float(), y)
    if unlabelled is not None:
        loss = loss + unlabelled[2] * Consistency.loss(logits_u, unlabelled[1])
    fit.scaler.scale(loss).backward()
    fit.scaler.step(fit.opt)
    fit.scaler.update()
    fit.sched.step()
    if fit.cons is not None:
        fit.cons.update(fit.net)
    return logits, loss


class RunningMeans:
    """Loss and per-class training Dice summed over the log window and the epoch.

    The sums stay on the device: no host synchronisation except when a log line is written.
    """

    def __init__(self, num_classes: int, device: torch.device, spatial_dims: int):
        self.device, self.nfg = device, num_classes - 1
        self.reset_window()
        self.reset_epoch()
        self.classes = torch.arange(1, num_classes, device=device).view(1, -1, *[1] * spatial_dims)

    def _zeros(self, n=()) -> torch.Tensor:
        return torch.zeros(n, dtype=torch.float64, device=self.device)

    def reset_window(self) -> None:
        self.window_loss, self.window_n, self.window_unl = self._zeros(), 0, self._zeros()

    def add_unlabelled(self, labelled_share: torch.Tensor) -> None:
        """The share of unlabelled pixels the consistency teacher labelled this step (summed on the device)."""
        self.window_unl += labelled_share.detach().double()

    def reset_epoch(self) -> None:
        self.epoch_loss, self.epoch_dice, self.epoch_cnt, self.epoch_n = (
            self._zeros(), self._zeros(self.nfg), self._zeros(self.nfg), 0)

    @torch.no_grad()
    def add(self, logits: torch.Tensor, y: torch.Tensor, loss: torch.Tensor) -> None:
        pred = logits.argmax(1, keepdim=True) == self.classes          # (B, C-1, ...) one-hot of foreground
        ref = (y == self.classes) & (y != IGNORE_LABEL)
        pred = pred & (y != IGNORE_LABEL)
        dims = tuple(d for d in range(pred.ndim) if d != 1)
        inter = (pred & ref).sum(dims).double()
        denom = pred.sum(dims).double() + ref.sum(dims).double()
        present = denom > 0
        self.epoch_dice += torch.where(present, 2 * inter / denom.clamp_min(1), torch.zeros_like(denom))
        self.epoch_cnt += present.double()
        lv = loss.detach().double()
        self.window_loss += lv
        self.epoch_loss += lv
        self.window_n += 1
        self.epoch_n += 1

    def epoch_row(self, epoch: int, step: int, class_names) -> dict:
        """The epoch's row of ``epochs.csv``; starts the next epoch's sums."""
        row = {"epoch": epoch, "step": step, "train_loss": float(self.epoch_loss) / self.epoch_n}
        dice_sum, dice_cnt = self.epoch_dice.cpu().numpy(), self.epoch_cnt.cpu().numpy()
        for i, name in enumerate(class_names):
            row[f"train_dice_{name}"] = dice_sum[i] / dice_cnt[i] if dice_cnt[i] else float("nan")
        self.reset_epoch()
        return row
