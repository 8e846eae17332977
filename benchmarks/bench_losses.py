"""Forward plus backward time of the MSA, HAPPIER and CSL losses against per-level loop versions.

Each method's loss from ``methods/`` runs on a DyML-sized batch (256 x 513 embeddings, 64 fine
classes x 4 images, a training hierarchy of 480 / 24 / 5 classes) next to a straightforward
implementation of the same loss written here: a Python loop over levels that materialises
every mask and pair term, as the official code does. Both run in one process, interleaved, and
the best of ``--repeats`` runs is kept, which makes the ratio robust to a busy machine. The
script also checks that both give the same loss and reports how much each keeps for backward.

Usage: ``python benchmarks/bench_losses.py [--repeats 5] [--threads N]``.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.profiler import ProfilerActivity, profile

from methods.csl import CSL_LOSS_RECIPES, CSLLoss
from methods.happier import HAPPIER_LOSS_RECIPES, HAPPIERLoss, NormSoftmaxLoss
from methods.msa import (
    MSA_LOSS_RECIPES,
    MSALoss,
    MSALossConfig,
    cross_level_loss,
    instance_alignment_loss,
)

BATCH_CLASSES, PER_CLASS, EMBEDDING_DIM = 64, 4, 513
FINE_PER_MIDDLE, MIDDLE_PER_COARSE, N_FINE = 20, 5, 480


class LoopMSALoss(nn.Module):
    """Multi-level MSA loss written level by level, every mask and term its own tensor."""

    def __init__(self, *, n_classes: tuple[int, ...], embedding_dim: int, config: MSALossConfig):
        super().__init__()
        self.n_classes, self.config = n_classes, config
        self.dim = embedding_dim // len(n_classes)
        self.proxies = nn.ParameterList(
            torch.empty(classes * proxies, self.dim)
            for classes, proxies in zip(n_classes, config.proxies_per_class, strict=True)
        )

    def forward(self, embeddings: Tensor, labels: Tensor, aux: Tensor, teacher: Tensor) -> Tensor:
        config, n_levels, batch_size = self.config, len(self.n_classes), len(embeddings)
        chunks, cluster = [], 0.0
        for level in range(n_levels):
            chunk = F.normalize(embeddings[:, level * self.dim : (level + 1) * self.dim], dim=1)
            chunks.append(chunk)
            sims = chunk @ F.normalize(self.proxies[level], dim=1).T
            sims = sims.reshape(batch_size, self.n_classes[level], -1)
            sims = (sims * torch.softmax(sims * config.pooling_factor, dim=2)).sum(dim=2)
            target = torch.zeros_like(sims).scatter_(1, labels[:, level : level + 1], 1.0)
            logits = (sims - config.margin * target) * config.scale
            cluster = cluster + F.cross_entropy(logits, labels[:, level])

        cross = loop_cross_level(chunks, labels)
        alignment = instance_alignment_loss(aux, teacher)
        return cluster / n_levels + config.alpha * cross + config.beta * alignment


def loop_cross_level(chunks: list[Tensor], labels: Tensor) -> Tensor:
    """MSA's cross-level constraint level by level, each mask and masked term a tensor."""
    n_levels, batch_size = len(chunks), len(labels)
    sims = [chunk @ chunk.T for chunk in chunks]
    positives = [labels[:, [level]] == labels[:, level] for level in range(n_levels)]
    terms = [
        torch.where(positive, (1 - sim) ** 2, (1 + sim) ** 2)
        for sim, positive in zip(sims, positives, strict=True)
    ]
    cross = 0.0
    for level in range(n_levels):
        switched = torch.zeros_like(positives[level])
        added = 0.0
        for other in range(n_levels):
            if other > level:
                violated = positives[level] & (sims[other] < sims[level]).detach()
            elif other < level:
                violated = ~positives[level] & (sims[other] > sims[level]).detach()
            else:
                continue
            switched = switched | violated
            added = added + (violated.float() * terms[other]).sum()
        own = (terms[level] * (1 - switched.float())).mean()
        cross = cross + own + added / batch_size**2
    return cross / n_levels


class LoopHAPPIERLoss(nn.Module):
    """HAPPIER loss with per-query relevance counting and the dense ``n^3`` rank tensors."""

    def __init__(self, *, n_classes: int, embedding_dim: int) -> None:
        super().__init__()
        self.config = HAPPIER_LOSS_RECIPES["vehicle"]
        self.cluster_loss = NormSoftmaxLoss(n_classes=n_classes, embedding_dim=embedding_dim)

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        config, rank, n_levels = self.config, self.config.rank, labels.shape[1]
        batch_size = len(labels)
        match = (labels.unsqueeze(1) == labels.unsqueeze(0)).sum(dim=2)
        weights = torch.tensor([(v / (n_levels - 1)) ** config.relevance_alpha for v in range(4)])
        table = torch.zeros(batch_size, n_levels + 1)
        for query, row in enumerate(match):
            values, counts = torch.unique(row, return_counts=True)
            table[query, values] = weights[values] / counts
        relevances = table.gather(1, match)

        scores = embeddings @ embeddings.T
        differences = scores.unsqueeze(1) - scores.unsqueeze(2)
        inferior = match.unsqueeze(2) > match.unsqueeze(1)
        hard = (differences.detach() >= 0).float()
        sigmoid = 1 / (1 + (-differences / rank.tau).clamp(-50, 50).exp())
        linear = rank.rho * (differences - rank.delta) + rank.offset
        above = torch.where(differences > rank.delta, linear, rank.start + sigmoid)
        smooth = torch.where(differences > 0, above, sigmoid)
        others = 1 - torch.eye(batch_size)
        ranks = 1 + (torch.where(inferior, smooth, hard) * others).sum(dim=2)
        shared = torch.minimum(relevances.unsqueeze(2), relevances.unsqueeze(1))
        hranks = relevances + (hard * others * shared).sum(dim=2)
        hap = (hranks / ranks).sum(dim=1) / relevances.sum(dim=1)

        cluster = self.cluster_loss(embeddings, labels[:, 0])
        return config.hap_weight * (1 - hap).mean() + config.cluster_weight * cluster


class LoopCSLLoss(nn.Module):
    """CSL loss with the masked log-sum-exps written out per level on cloned logits."""

    def __init__(self, *, proxy_labels: Tensor, embedding_dim: int) -> None:
        super().__init__()
        self.proxy_labels = proxy_labels
        self.config = CSL_LOSS_RECIPES["vehicle"]
        self.proxies = nn.Parameter(torch.empty(len(proxy_labels), embedding_dim))

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        sims = embeddings @ F.normalize(self.proxies, dim=1).T
        total = 0.0
        for level, margin in enumerate(self.config.margins):
            same = labels[:, [level]] == self.proxy_labels[:, level]
            negatives = sims * self.config.scale
            negatives[same] = -math.inf
            if level == 0:
                positives = -sims * self.config.scale
                positives[~same] = -math.inf
                positive = positives.logsumexp(dim=1)
            negative = negatives.logsumexp(dim=1)
            total = total + F.softplus(negative + positive + margin * self.config.scale).mean()
        return total


def _hierarchy() -> Tensor:
    fine = torch.arange(N_FINE)
    middle = fine // FINE_PER_MIDDLE
    return torch.stack([fine, middle, middle // MIDDLE_PER_COARSE], dim=1)


def _batch(table: Tensor, generator: torch.Generator) -> tuple[Tensor, ...]:
    classes = torch.randperm(len(table), generator=generator)[:BATCH_CLASSES]
    labels = table[classes].repeat_interleave(PER_CLASS, dim=0)
    size = (len(labels), EMBEDDING_DIM)
    embeddings = torch.randn(size, generator=generator)
    aux, teacher = torch.randn(size, generator=generator), torch.randn(size, generator=generator)
    return embeddings, labels, aux, teacher


def _peak_bytes(step: Callable[[], Tensor]) -> int:
    """Approximate peak of the memory one forward plus backward allocates, from the profiler."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
        step().backward()
    events = sorted(profiler.events(), key=lambda event: event.time_range.start)
    live, peak = 0, 0
    for event in events:
        live += event.self_cpu_memory_usage
        peak = max(peak, live)
    return peak


def _compare(
    name: str, ours: Callable[[], Tensor], loop: Callable[[], Tensor], repeats: int
) -> dict[str, int]:
    torch.testing.assert_close(ours().detach(), loop().detach(), rtol=1e-5, atol=1e-6)
    steps = {"ours": ours, "loop": loop}
    peaks = {label: _peak_bytes(step) for label, step in steps.items()}
    best = dict.fromkeys(steps, math.inf)
    for _ in range(repeats):  # interleaved, so both see the same machine load
        for label, step in steps.items():
            start = time.perf_counter()
            step().backward()
            best[label] = min(best[label], time.perf_counter() - start)
    print(
        f"{name:<28} {1e3 * best['ours']:9.1f} {1e3 * best['loop']:9.1f} "
        f"{best['loop'] / best['ours']:7.2f}x {peaks['ours'] / 2**20:9.1f} "
        f"{peaks['loop'] / 2**20:9.1f}"
    )
    return peaks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per loss")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    table = _hierarchy()
    n_classes = tuple(len(table[:, level].unique()) for level in range(3))
    embeddings, labels, aux, teacher = _batch(table, generator)
    embeddings.requires_grad_()
    aux.requires_grad_()
    unit = F.normalize(embeddings.detach(), dim=1).requires_grad_()
    print(
        f"batch {tuple(embeddings.shape)}, {BATCH_CLASSES} fine classes x {PER_CLASS}, "
        f"train hierarchy {n_classes}, {torch.get_num_threads()} threads, best of {args.repeats}"
    )
    header = ("loss", "ours ms", "loop ms", "speedup", "ours MiB", "loop MiB")
    print(f"{header[0]:<28}", *(f"{column:>9}" for column in header[1:]), "(MiB: peak allocated)")

    for dataset in ("vehicle", "animal"):
        config = MSA_LOSS_RECIPES[dataset]
        ours = MSALoss(n_classes=n_classes, embedding_dim=EMBEDDING_DIM, config=config)
        loop = LoopMSALoss(n_classes=n_classes, embedding_dim=EMBEDDING_DIM, config=config)
        with torch.no_grad():
            for mine, theirs in zip(ours.cluster_losses, loop.proxies, strict=True):
                theirs.copy_(mine.proxies)
        _compare(
            f"MSA ({dataset} recipe)",
            lambda ours=ours: ours(embeddings, labels, aux, teacher)[0],
            lambda loop=loop: loop(embeddings, labels, aux, teacher),
            args.repeats,
        )

    chunks = F.normalize(embeddings.detach().unflatten(1, (3, -1)), dim=2).transpose(0, 1)
    chunks.requires_grad_()
    peaks = _compare(
        "MSA cross-level term only",
        lambda: cross_level_loss(chunks, labels),
        lambda: loop_cross_level(list(chunks), labels),
        args.repeats,
    )
    square = len(labels) ** 2 * embeddings.element_size()
    print(
        f"{'':<28} peak in {len(labels)} x {len(labels)} float32 matrices: "
        f"ours {peaks['ours'] / square:.1f}, loop {peaks['loop'] / square:.1f}"
    )

    ours = HAPPIERLoss(
        n_classes=N_FINE, embedding_dim=EMBEDDING_DIM, config=HAPPIER_LOSS_RECIPES["vehicle"]
    )
    loop = LoopHAPPIERLoss(n_classes=N_FINE, embedding_dim=EMBEDDING_DIM)
    loop.cluster_loss.load_state_dict(ours.cluster_loss.state_dict())
    _compare(
        "HAPPIER (vehicle weights)",
        lambda: ours(unit, labels)[0],
        lambda: loop(unit, labels),
        args.repeats,
    )

    ours = CSLLoss(
        label_table=table, embedding_dim=EMBEDDING_DIM, config=CSL_LOSS_RECIPES["vehicle"]
    )
    loop = LoopCSLLoss(proxy_labels=ours.proxy_labels, embedding_dim=EMBEDDING_DIM)
    with torch.no_grad():
        loop.proxies.copy_(ours.proxies)
    _compare("CSL", lambda: ours(unit, labels)[0], lambda: loop(unit, labels), args.repeats)


if __name__ == "__main__":
    main()
