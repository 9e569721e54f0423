"""A task's metrics under torchrun: each process counts its own share of the test set (every
world_size-th sample: none repeated, none padded) and the metrics' counts (``Metric.summed``) are
added up over the processes before ``compute()``, so 2 gloo processes give one process's mIoU; a
user's metric that declares no counts warns that it covers rank 0's share only."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from gpd.distill.tasks import Metric, SegmentationMetrics, SegmentationTask, TopOneAccuracy
from gpd.distill.tasks.metrics import merge_states
from gpd.training.distributed import DistContext, shard
from gpd.training.evaluate import split_metrics

pytestmark = pytest.mark.usefixtures("torch_single_thread")

SAMPLES, CLASSES = 7, 4  # an odd count: the 2 shards differ in size (a padding sampler would repeat one)


class Brier(Metric):
    """A user's metric that sums (``summed``): the mean of (1 - p(label))², with ignored pixels left out."""

    summed = ("sum", "count")

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.sum, self.count = 0.0, 0

    def update(self, logits: torch.Tensor, y: torch.Tensor) -> None:
        valid = y != 255
        p = logits.softmax(1).gather(1, y.clamp(max=CLASSES - 1).unsqueeze(1)).squeeze(1)
        self.sum += float(((1 - p) ** 2)[valid].sum())
        self.count += int(valid.sum())

    def compute(self) -> dict[str, float]:
        return {"brier": self.sum / max(self.count, 1)}


class Unsummed(Brier):
    """The same metric without ``summed``: it cannot be merged."""

    summed = ()


class SegWithBrier(SegmentationTask):
    def __init__(self, metric: type[Metric]) -> None:
        super().__init__()
        self.metric_class = metric

    def metric(self) -> Metric:
        return self.metric_class()


def data_and_model() -> tuple[TensorDataset, nn.Module]:
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(SAMPLES, 3, 8, 8, generator=gen)
    masks = torch.randint(0, CLASSES, (SAMPLES, 8, 8), generator=gen)
    masks[:, :2, :2] = 255  # ignored pixels count for no metric
    torch.manual_seed(0)
    model = nn.Conv2d(3, CLASSES, 3, padding=1).eval()
    return TensorDataset(images, masks), model


def metrics_of(ctx: DistContext, task: SegmentationTask) -> dict[str, float]:
    data, model = data_and_model()
    loader = DataLoader(shard(data, ctx), batch_size=2)  # as the training loop's test loader
    return split_metrics({"student": model}, loader, task, torch.device("cpu"), ctx=ctx)


def _worker(rank: int, folder: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/store", rank=rank, world_size=2)
    try:
        ctx = DistContext(rank=rank, world_size=2, local_rank=rank)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            report = {
                "segmentation": metrics_of(ctx, SegmentationTask()),
                "summed": metrics_of(ctx, SegWithBrier(Brier)),
                "unsummed": metrics_of(ctx, SegWithBrier(Unsummed)),
                "shard": len(shard(data_and_model()[0], ctx)),  # type: ignore[arg-type]
            }
        report["warnings"] = [str(w.message) for w in caught]
        Path(folder, f"rank{rank}.json").write_text(json.dumps(report))
    finally:
        dist.destroy_process_group()


def test_two_processes_give_the_metrics_of_one(tmp_path: Path):
    mp.spawn(_worker, args=(str(tmp_path),), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["shard"] for r in ranks] == [4, 3]  # every sample once
    alone = DistContext()
    expected = metrics_of(alone, SegmentationTask())
    assert all(report["segmentation"] == expected for report in ranks)  # integer counts: exact
    summed = metrics_of(alone, SegWithBrier(Brier))  # float sums of other batches: up to rounding
    assert all(report["summed"] == pytest.approx(summed, rel=1e-6) for report in ranks)
    assert ranks[0]["segmentation"]["student"] == ranks[0]["segmentation"]["student:miou"]
    # the unsummed metric: rank 0's share only, and said so, on rank 0 only
    share = DataLoader(shard(data_and_model()[0], DistContext(0, 2, 0)), batch_size=2)
    own = split_metrics({"student": data_and_model()[1]}, share, SegWithBrier(Unsummed), torch.device("cpu"))
    assert ranks[0]["unsummed"] == pytest.approx(own)
    assert ranks[0]["unsummed"] != pytest.approx(metrics_of(alone, SegWithBrier(Unsummed)))
    assert len(ranks[0]["warnings"]) == 1 and "Unsummed declares no counts to sum" in ranks[0]["warnings"][0]
    assert ranks[1]["warnings"] == []


def test_merge_states_adds_counts_and_skips_empty_shares():
    seg = [SegmentationMetrics(num_classes=2) for _ in range(3)]
    seg[0].update(torch.tensor([[[[2.0]], [[0.0]]]]), torch.tensor([[[0]]]))  # one pixel, class 0, right
    seg[1].update(torch.tensor([[[[0.0]], [[2.0]]]]), torch.tensor([[[0]]]))  # one pixel, class 0, wrong
    # seg[2] saw nothing (an empty share): its confusion is None and adds nothing
    merged = SegmentationMetrics(num_classes=2)
    merged.load_state(merge_states([m.state() for m in seg]))
    assert merged.confusion is not None and merged.confusion.tolist() == [[1, 1], [0, 0]]
    assert merged.compute()["pixel_acc"] == 0.5
    top = [TopOneAccuracy(), TopOneAccuracy()]
    top[0].update(torch.tensor([[1.0, 0.0]]), torch.tensor([0]))
    top[1].update(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([1, 1]))
    both = TopOneAccuracy()
    both.load_state(merge_states([t.state() for t in top]))
    assert (both.correct, both.total) == (2, 3)
    assert Metric().state() is None and merge_states([None, None]) == {}
