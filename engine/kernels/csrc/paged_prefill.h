// What the prefill kernel's two paths (paged_prefill.cpp: float32 tiles, AVX2;
// paged_prefill_bf16.h: vdpbf16ps products, AVX-512 BF16) share: the work items and the
// walk's constants.
#pragma once

#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "paged_common.h"

namespace tandem_paged {

constexpr int64_t kTile = 16;  // query positions per work item
// context positions per step of an item: four 16-wide column tiles. 16 at a time spent as
// long on each query vector's softmax bookkeeping (its running max, the rescale of its
// output row) as on its products.
constexpr int64_t kKeys = 64;
// "minus infinity" for masks and the first max: finite, as -ffast-math assumes every value
// is, and exp(kNegInf - x) is still 0.
constexpr float kNegInf = -1e30f;

// One sequence's tile of up to kTile query positions for one kv head.
struct Item {
  int64_t seq, kv_head, first_query;  // first_query: index inside the sequence's chunk
};

// Every sequence's tiles, a kv head's tiles together (they walk the same context).
inline std::vector<Item> make_items(const Geometry& g, int64_t seqs, const int64_t* query_lens) {
  std::vector<Item> items;
  for (int64_t s = 0; s < seqs; ++s)
    for (int64_t h = 0; h < g.kv_heads; ++h)
      for (int64_t first = 0; first < query_lens[s]; first += kTile) items.push_back({s, h, first});
  return items;
}

// The row of position p (K; V is `half` further) for kv head h of a sequence's block table.
template <typename T>
inline const T* kv_row(const Geometry& g, const T* kv, const int64_t* table, int64_t p, int64_t h) {
  return kv + table[p / g.bs] * g.block_stride + (p % g.bs) * g.row + h * g.dim;
}

// f(item) for every item, split over `threads` threads round-robin, so that the causal
// triangle's long and short items spread evenly. make_scratch() makes each thread's scratch,
// passed to f as its second argument.
template <typename MakeScratch, typename F>
void for_items(const std::vector<Item>& items, MakeScratch make_scratch, F f) {
  const int64_t threads =
      std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), items.size()));
  at::parallel_for(0, threads, 1, [&](int64_t begin, int64_t end) {
    auto scratch = make_scratch();
    for (int64_t t = begin; t < end; ++t)
      for (size_t w = t; w < items.size(); w += threads) f(items[w], scratch);
  });
}

}  // namespace tandem_paged
