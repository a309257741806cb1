"""Fix targeted cases with a LoRA overlay on the champion, keeping behaviour elsewhere with a KL locality term.

The overlay is LoRA (Hu et al. 2021, arXiv:2106.09685); the edit objective follows model-editing
work that trades edit success against locality, e.g. "Editable Neural Networks" (Sinitsin et al.
2020, ICLR): cross-entropy on the edit cases plus ``locality_weight`` x KL(champion || model) on
retained samples the champion was trained on, so predictions outside the edit's scope stay put.
The champion's weights and BatchNorm statistics stay frozen; dropping the overlay restores it.

On a routed champion (``layout: routed``, mixtures of LoRA experts) the adapter goes, by default
(``train.scope: routed``), only on the experts the router sends the edit's cases to, and the locality
rows are retained samples sent there too: every other expert stays bit-identical, so the edit cannot move
an answer outside those experts, and a training batch costs one expert call instead of one per expert.
This is the locality of MEMIT-style scoped edits (Meng et al. 2023, "Mass-Editing Memory in a
Transformer": change the weights that compute the behaviour, nothing else), applied at expert level.
``scope: network`` puts the adapter on every expert, as before.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from edits.edit.spec import load_spec, resolve_cases, spec_hash
from edits.registry import Change, OperatorEnv, register_method
from pipeline.data import SampleSet, UmeData
from pipeline.model.components import ComponentDraft
from pipeline.model.lineage import hash_sample_ids
from pipeline.model.lora import LoraSettings, adapter_tensors, attach_lora, lora_targets
from pipeline.model.net import predict_logits, random_shift, set_norm_eval
from pipeline.model.routing import RoutedNetwork


@dataclass(frozen=True)
class LoraEditConfig:
    """An ``edit`` step: the spec file, and (recorded on replay) the confusion it resolved to."""

    spec: str
    confusion: str | None = None

    def __post_init__(self) -> None:
        load_spec(self.spec)  # validated with the rest of params.yaml, before anything is written


class EditModule(L.LightningModule):
    """Cross-entropy on edit cases + ``locality_weight`` x KL to the champion's outputs on locality rows."""

    def __init__(self, net: nn.Module, *, lr: float, locality_weight: float, augment_shift: int) -> None:
        super().__init__()
        self.net = net
        self.lr = lr
        self.locality_weight = locality_weight
        self.augment_shift = augment_shift

    def train(self, mode: bool = True) -> EditModule:
        """Norm statistics stay frozen: the overlay is the only change."""
        super().train(mode)
        if mode:
            set_norm_eval(self.net)
        return self

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        """Edit loss on case rows, locality KL on the others."""
        x, y, target, is_case = batch
        logits = self.net(random_shift(x, self.augment_shift))
        loss = logits.new_zeros(())
        if is_case.any():
            loss = loss + F.cross_entropy(logits[is_case], y[is_case])
        keep = ~is_case
        if keep.any() and self.locality_weight > 0:
            kl = F.kl_div(F.log_softmax(logits[keep], 1), target[keep], reduction="batchmean")
            loss = loss + self.locality_weight * kl
            self.log("locality_kl", kl, prog_bar=True, on_step=False, on_epoch=True, batch_size=int(keep.sum()))
        self.log("train_loss", loss, prog_bar=True, on_step=False, on_epoch=True, batch_size=len(y))
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """AdamW over the adapter."""
        return torch.optim.AdamW([p for p in self.net.parameters() if p.requires_grad], lr=self.lr)


def case_routes(net: nn.Module, cases: SampleSet, scope: str) -> list[int] | None:
    """The expert a routed ``net``'s router sends each of the edit's ``cases`` to (``scope: routed``); ``None`` when
    the adapter goes on the whole network (``scope: network``, or ``net`` is not routed)."""
    if scope != "routed" or not isinstance(net, RoutedNetwork):
        return None
    with torch.no_grad():
        return net.router(cases.x).tolist()


def expert_targets(net: nn.Module, experts: tuple[int, ...] | None) -> tuple[str, ...]:
    """The LoRA targets of ``net``, only those inside ``experts`` (``experts.<i>.``) when given."""
    targets = lora_targets(net)
    if experts is None:
        return targets
    prefixes = tuple(f"experts.{i}." for i in experts)
    return tuple(t for t in targets if t.startswith(prefixes))


def locality_set(
    data: UmeData, env: OperatorEnv, scope_labels: tuple[int, ...], per_case: float, cases: int, *, net: nn.Module, routes: list[int] | None
) -> SampleSet:
    """Retained samples the champion was trained on, ``per_case`` x the ``cases``: half of the edit's own labels (their
    ordinary look must not move), half of the others. With the cases' ``routes``, each of those experts gets ``per_case``
    x the cases sent to it, from the retained samples sent to it: on the other experts the adapter changes nothing, and
    an expert that receives few cases still gets its share of locality (drawn from the whole pool, a small expert's
    adapter would learn its few cases with almost no constraint)."""
    retained = data.select("locality", hashed_ids=env.champion_lineage)
    if routes is None or not len(retained):
        return _inside_and_outside(data, retained, scope_labels, int(round(per_case * cases)), env.seed)
    assert isinstance(net, RoutedNetwork)
    with torch.no_grad():
        route = net.router(retained.x).tolist()
    parts = []
    for expert in sorted(set(routes)):
        pool = retained.take([i for i, e in enumerate(route) if e == expert])
        parts.append(_inside_and_outside(data, pool, scope_labels, int(round(per_case * routes.count(expert))), env.seed))
    out = parts[0]
    for part in parts[1:]:
        out = out.concat(part, name="locality")
    return out


def _inside_and_outside(data: UmeData, pool: SampleSet, scope_labels: tuple[int, ...], count: int, seed: int) -> SampleSet:
    """``count`` samples of ``pool``: half with the edit's labels, half without (fewer when the pool has fewer)."""
    labels = pool.y.tolist()
    inside = pool.take([i for i, y in enumerate(labels) if y in scope_labels])
    outside = pool.take([i for i, y in enumerate(labels) if y not in scope_labels])
    half = count // 2
    return data.subsample(inside, half, seed=seed).concat(data.subsample(outside, count - half, seed=seed + 1), name="locality")


def _success(net: nn.Module, samples) -> float:
    return float((predict_logits(net, samples.x).argmax(1) == samples.y).float().mean()) if len(samples) else 0.0


@register_method("edit", "lora", LoraEditConfig)
def edit_lora(net: nn.Module, data: UmeData, config: LoraEditConfig, env: OperatorEnv) -> Change:
    """Train a LoRA overlay that fixes the spec's cases while staying close to the champion elsewhere."""
    spec = load_spec(config.spec)
    name = env.step
    resolved = resolve_cases(spec, name, data, net, seed=env.seed, confusion=config.confusion, file=config.spec)
    before = {"cases": _success(net, resolved.cases), "holdout": _success(net, resolved.holdout)}
    t = spec.train
    routes = case_routes(net, resolved.cases, t.scope)
    experts = tuple(sorted(set(routes))) if routes is not None else None
    locality = locality_set(data, env, resolved.scope_labels, t.locality_samples, len(resolved.cases), net=net, routes=routes)
    with torch.no_grad():
        champion_probs = predict_logits(net, locality.x).softmax(1)
    cases = resolved.cases
    x = torch.cat([cases.x, locality.x])
    y = torch.cat([cases.y, locality.y])
    target = torch.cat([torch.zeros(len(cases), champion_probs.shape[1]), champion_probs])
    is_case = torch.cat([torch.ones(len(cases), dtype=torch.bool), torch.zeros(len(locality), dtype=torch.bool)])
    loader = DataLoader(
        TensorDataset(x, y, target, is_case),
        batch_size=t.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(env.seed),
    )
    settings = LoraSettings(rank=t.rank, alpha=t.alpha, targets=expert_targets(net, experts))
    peft_net = attach_lora(net, settings, seed=env.seed)
    module = EditModule(peft_net, lr=t.lr, locality_weight=t.locality_weight, augment_shift=t.augment_shift)
    env.make_trainer(t.epochs).fit(module, train_dataloaders=loader)
    after = {"cases": _success(peft_net, resolved.cases), "holdout": _success(peft_net, resolved.holdout)}
    confusion = f"{resolved.confusion[0]}->{resolved.confusion[1]}" if resolved.confusion else None
    drafts = [
        ComponentDraft(
            kind="lora",
            tensors=adapter_tensors(peft_net),
            lineage=hash_sample_ids([*cases.sample_ids, *locality.sample_ids]),
            meta={
                "method": "edit/lora",
                "config": {**asdict(config), "confusion": confusion},
                "spec": spec.to_json(),
                "spec_sha": spec_hash(config.spec),
                "lora": settings.to_json(),
                "edits": [resolved.to_json()],
                "success_before": before,
                "success_after": after,
                **({"experts": list(experts)} if experts is not None else {}),
            },
        )
    ]
    return Change(drafts=drafts, notes={"experts": list(experts)} if experts is not None else {})
