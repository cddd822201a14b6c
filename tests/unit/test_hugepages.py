"""engine/hugepages.py: the KV cache's memory, on transparent huge pages where granted."""

from __future__ import annotations

import gc
import mmap

import pytest
import torch

from engine import hugepages


def _anon_huge_kib() -> int:
    with open("/proc/self/smaps_rollup") as f:
        text = f.read()
    return int(text.split("AnonHugePages:")[1].split()[0])


def test_small_tensors_are_plain_zeros():
    t = hugepages.zeros((4, 8), torch.bfloat16)
    assert t.shape == (4, 8) and t.dtype == torch.bfloat16
    assert not t.any()


def test_a_large_tensor_is_zeroed_contiguous_aligned_and_outlives_its_mapping():
    shape = (64, 30, 2, 16, 3, 64)  # ~22 MiB of bfloat16, a small KV cache
    t = hugepages.zeros(shape, torch.bfloat16)
    gc.collect()  # the mapping lives as long as the tensor, not the function's frame
    assert t.shape == shape and t.is_contiguous() and not t.any()
    t.fill_(1.5)  # writable end to end
    assert t.sum().item() == pytest.approx(1.5 * t.numel())
    if hugepages.thp_mode() != "never" and hasattr(mmap, "MADV_HUGEPAGE"):
        assert t.data_ptr() % hugepages.HUGE_PAGE == 0


@pytest.mark.skipif(
    hugepages.thp_mode() == "never" or not hasattr(mmap, "MADV_HUGEPAGE"),
    reason="this kernel grants no transparent huge pages (THP mode 'never' or not Linux)",
)
def test_the_kernel_backs_it_with_huge_pages():
    before = _anon_huge_kib()
    t = hugepages.zeros((64 << 20,), torch.uint8)  # 64 MiB
    grown = _anon_huge_kib() - before
    # compaction may leave a few 2 MiB regions on small pages; most must be huge
    assert grown >= 32 << 10, f"only {grown} KiB of 64 MiB on huge pages"
    del t


def test_thp_mode_reads_the_bracketed_choice(tmp_path, monkeypatch):
    f = tmp_path / "enabled"
    f.write_text("always [madvise] never\n")
    monkeypatch.setattr(hugepages, "_THP_MODE", f)
    assert hugepages.thp_mode() == "madvise"
    monkeypatch.setattr(hugepages, "_THP_MODE", tmp_path / "absent")
    assert hugepages.thp_mode() == "never"
