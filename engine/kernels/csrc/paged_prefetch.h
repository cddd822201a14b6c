// The decode kernel's software prefetch of the cache blocks it reads next
// (paged_attention.cpp).
#pragma once

#include <algorithm>
#include <cstdint>

#include "paged_common.h"

namespace tandem_paged {

// Into L2 (prefetcht1). Through asm on x86: GCC deleted loops whose bodies were only
// __builtin_prefetch (none was left in the binary).
inline void prefetch_l2(const char* p) {
#if defined(__x86_64__)
  asm volatile("prefetcht1 %0" : : "m"(*p));
#else
  __builtin_prefetch(p, 0, 2);
#endif
}

// Software prefetch of the blocks a walk reads next. A block's K and V rows of one layer
// (~12 KiB for SmolLM2 in bf16) lie at a random place in a cache of GiBs, and the
// hardware's prefetchers start on a stream only after it has missed, a 4 KiB page at a
// time: on its own the walk waited on memory about as long as it computed. Measured on
// decode attention alone (batch 32, context 290, bf16, 2 threads, blocks shuffled over
// 1 GiB; docs/benchmarks.md): the first KiB of the next block (before) 21-25 ms a step;
// every line of the block three ahead, into L2, spread over the current block's work,
// 13-15 ms. Two ahead into L1 gained nothing; four or six ahead, or prefetcht2, as three.
// A walk's own first blocks come from the item before it on the same thread (lead()):
// 8.4 -> 7.9 ms a step on a Zen 4 (2026-12-05; one or two blocks led: 8.0).
class BlockPrefetch {
 public:
  static constexpr int64_t kAhead = 3;

  // table: the sequence's blocks, [0, blk1) of them walked; the lines of each are the
  // bytes [col0, col1) of every row of its K and of its V (the walk's kv heads).
  BlockPrefetch(const char* kv, const int64_t* table, int64_t blk1, int64_t block_bytes,
                int64_t half_bytes, int64_t row_bytes, int64_t col0, int64_t col1)
      : kv_(kv), table_(table), blk1_(blk1), block_bytes_(block_bytes), row_bytes_(row_bytes),
        col0_(col0 & ~int64_t{63}), chunks_((col1 - col0_ + 63) / 64),
        lines_(2 * (half_bytes / row_bytes) * chunks_) {}

  // Before the walk: the blocks between its first and the first that slice() covers.
  void begin(int64_t blk0) const {
    for (int64_t b = blk0 + 1; b < std::min(blk1_, blk0 + kAhead); ++b) fetch(b, 0, lines_);
  }

  // The walk's first blocks, kAhead of them, for an item that comes after the one now
  // walked (its begin() then finds them in L2).
  void lead() const {
    for (int64_t b = 0; b < std::min(blk1_, kAhead); ++b) fetch(b, 0, lines_);
  }

  // While block blk is worked on in `parts` pieces, before piece i: the i-th share of
  // the lines of block blk + kAhead.
  void slice(int64_t blk, int64_t i, int64_t parts) const {
    if (blk + kAhead >= blk1_) return;
    const int64_t per = (lines_ + parts - 1) / parts;
    fetch(blk + kAhead, i * per, std::min(lines_, (i + 1) * per));
  }

 private:
  void fetch(int64_t blk, int64_t from, int64_t to) const {
    // rows of K, then rows of V: one stretch of memory. One division a call, none a line
    // (a division per line cost more than the prefetch gained).
    const char* base = kv_ + table_[blk] * block_bytes_ + col0_;
    int64_t row = from / chunks_, chunk = from % chunks_;
    for (int64_t line = from; line < to; ++line) {
      prefetch_l2(base + row * row_bytes_ + chunk * 64);
      if (++chunk == chunks_) chunk = 0, ++row;
    }
  }

  const char* kv_;
  const int64_t* table_;
  int64_t blk1_, block_bytes_, row_bytes_, col0_, chunks_, lines_;
};

template <typename T>
BlockPrefetch prefetch_for(const Geometry& g, const T* kv, const int64_t* table, int64_t blk1,
                           int64_t h0, int64_t h1) {
  constexpr int64_t es = sizeof(T);
  return BlockPrefetch(reinterpret_cast<const char*>(kv), table, blk1, g.block_stride * es,
                       g.half * es, g.row * es, h0 * g.dim * es, h1 * g.dim * es);
}

}  // namespace tandem_paged
