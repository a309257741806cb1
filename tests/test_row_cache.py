"""The gate's row cache (behaviors/cache.py): what a gate computed for an immutable model is read, never recomputed."""

from __future__ import annotations

from pathlib import Path

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from behaviors.cache import RowCache
from behaviors.context import ModelUnderTest
from pipeline.data import SampleSet


def sample_set(ids: list[str], name: str = "s") -> SampleSet:
    x = torch.stack([torch.full((1, 4, 4), float(int(i, 16) % 97) / 97) for i in ids]) if ids else torch.zeros(0, 1, 4, 4)
    return SampleSet(name, x, torch.zeros(len(ids), dtype=torch.long), tuple(ids), ("g",) * len(ids), ("",) * len(ids))


class Counting(nn.Module):
    """A linear model that counts the samples it was asked about."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(16, 3)
        self.seen = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen += len(x)
        return self.linear(x.flatten(1))


def test_a_second_gate_reads_what_the_first_computed(tmp_path: Path) -> None:
    ids = [f"{i:04x}" for i in range(40)]
    first_net = Counting()
    first = ModelUnderTest("v1", 1, first_net, key="manifest-a", cache=RowCache(tmp_path))
    expected = first.logits(sample_set(ids))
    assert first_net.seen == 40

    second_net = Counting()  # another process: a new cache object over the same files, the same version
    second = ModelUnderTest("v1", 1, second_net, key="manifest-a", cache=RowCache(tmp_path))
    assert torch.equal(second.logits(sample_set(ids[::-1], name="reversed")), expected.flip(0))
    assert second_net.seen == 0, "a cached version ran forward again"
    wider = second.logits(sample_set(ids + ["ffff", "fffe"], name="wider"))
    assert second_net.seen == 2, "only the two new samples run"
    assert torch.allclose(wider, Counting()(sample_set(ids + ["ffff", "fffe"]).x), atol=1e-6)


def test_another_version_never_reads_its_rows(tmp_path: Path) -> None:
    ids = ["aa", "bb"]
    ModelUnderTest("v1", 1, Counting(), key="manifest-a", cache=RowCache(tmp_path)).logits(sample_set(ids))
    other = Counting()
    ModelUnderTest("v2", 2, other, key="manifest-b", cache=RowCache(tmp_path)).logits(sample_set(ids))
    assert other.seen == 2


def test_an_unreadable_file_is_a_miss_and_is_rewritten(tmp_path: Path) -> None:
    cache = RowCache(tmp_path)
    ModelUnderTest("v1", 1, Counting(), key="k", cache=cache).logits(sample_set(["aa"]))
    path = cache.path("k", "logits")
    path.write_bytes(b"not safetensors")
    net = Counting()
    ModelUnderTest("v1", 1, net, key="k", cache=RowCache(tmp_path)).logits(sample_set(["aa"]))
    assert net.seen == 1
    assert RowCache(tmp_path).rows("k", "logits", sample_set(["aa"]), lambda s: torch.full((len(s), 3), float("nan"))).isfinite().all()


def test_a_follower_reads_and_writes_nothing(tmp_path: Path) -> None:
    ModelUnderTest("v1", 1, Counting(), key="k", cache=RowCache(tmp_path, writable=False)).logits(sample_set(["aa"]))
    assert not any(tmp_path.rglob("*.safetensors"))


def test_no_key_no_cache(tmp_path: Path) -> None:
    net = Counting()
    model = ModelUnderTest("crafted", None, net, cache=RowCache(tmp_path))
    model.logits(sample_set(["aa"]))
    model.logits(sample_set(["aa"], name="again"))
    assert net.seen == 2 and not any(tmp_path.rglob("*.safetensors"))


@settings(max_examples=30, deadline=None, database=None)
@given(batches=st.lists(st.lists(st.sampled_from([f"{i:02x}" for i in range(12)]), max_size=8), min_size=1, max_size=5))
def test_rows_are_what_compute_gives_whatever_the_order_of_requests(tmp_path_factory, batches: list[list[str]]) -> None:
    """Invariant: for any sequence of sample sets (repeats, duplicates, empty sets), the cache returns exactly the rows
    ``compute`` gives for those samples, and computes each sample at most once."""
    root = tmp_path_factory.mktemp("rows")
    computed: list[str] = []

    def compute(s: SampleSet) -> torch.Tensor:
        computed.extend(s.sample_ids)
        return torch.tensor([[int(i, 16), -int(i, 16)] for i in s.sample_ids], dtype=torch.float64).reshape(-1, 2)

    for ids in batches:
        rows = RowCache(root).rows("m", "k", sample_set(ids), compute)
        assert rows.tolist() == [[int(i, 16), -int(i, 16)] for i in ids]
    assert len(computed) == len(set(computed))


def test_a_shadow_statistic_is_computed_once_across_banks(tmp_path: Path) -> None:
    from behaviors.references import ReferenceBank, Shadow
    from pipeline.core.config import ReferenceConfig

    samples = sample_set([f"{i:04x}" for i in range(10)])
    nets = [Counting(), Counting()]
    cache = RowCache(tmp_path)

    def bank() -> ReferenceBank:
        shadows = [Shadow(f"shadow-{i}", net, frozenset(), key=f"references/b/r/shadow-{i}-h") for i, net in enumerate(nets)]
        return ReferenceBank(tmp_path, shadows, config=ReferenceConfig(query_shift=0), cache=RowCache(tmp_path))

    phi, _ = bank().statistics(samples)
    assert [n.seen for n in nets] == [10, 10]
    again, _ = bank().statistics(samples)
    assert [n.seen for n in nets] == [10, 10] and (again == phi).all()
    cache.drop("references/b/r/shadow-0-h")
    bank().statistics(samples)
    assert [n.seen for n in nets] == [20, 10], "a dropped shadow's rows are computed again, the other's are read"


def test_erasure_drops_the_erased_samples_rows_and_keeps_the_others(tmp_path: Path) -> None:
    ids = [f"{i:04x}" for i in range(12)]
    erased = set(ids[2:5])
    for key in ("manifest-a", "manifest-b"):
        ModelUnderTest(key, 1, Counting(), key=key, cache=RowCache(tmp_path)).logits(sample_set(ids))
    (tmp_path / "manifest-c").mkdir()
    (tmp_path / "manifest-c" / "logits.safetensors").write_bytes(b"not a cache file")
    assert RowCache(tmp_path).drop_samples(lambda s: s in erased) == 3  # two rewritten, the unreadable one removed
    kept = [s for s in ids if s not in erased]
    reader = Counting()
    again = ModelUnderTest("manifest-a", 1, reader, key="manifest-a", cache=RowCache(tmp_path)).logits(sample_set(kept))
    assert reader.seen == 0 and torch.allclose(again, Counting()(sample_set(kept).x), atol=1e-6)  # the others stay cached, correct
    asked = Counting()
    ModelUnderTest("manifest-b", 1, asked, key="manifest-b", cache=RowCache(tmp_path)).logits(sample_set(sorted(erased)))
    assert asked.seen == len(erased)  # the erased rows are gone: asking for them computes again
    assert not (tmp_path / "manifest-c" / "logits.safetensors").exists()
